//! The sample corpus shipped inside the binary, so `ragmeshctl demo` works from any directory.
//! The text lives in `samples/corpus.jsonl` at the workspace root (see `samples/README.md` for
//! its origin and licence).

use ragmesh_index::Document;
use ragmesh_index::ingest::{IngestError, parse_jsonl};

/// `samples/corpus.jsonl`: one JSON document per line (id, collection, title, body, metadata).
pub const CORPUS_JSONL: &str = include_str!("../../../samples/corpus.jsonl");

/// A query that matches documents spread over the whole corpus, so with the round-robin split
/// of the demo every agent has hits.
pub const DEMO_QUERY: &str = "certificate rotation";

/// The corpus as documents; documents without a collection go to `docs`.
pub fn documents() -> Result<Vec<Document>, IngestError> {
    parse_jsonl(CORPUS_JSONL, "docs")
}

/// Splits `docs` round-robin into `parts` lists: document i goes to list i % parts.
pub fn round_robin(docs: Vec<Document>, parts: usize) -> Vec<Vec<Document>> {
    let parts = parts.max(1);
    let mut split: Vec<Vec<Document>> = (0..parts).map(|_| Vec::new()).collect();
    for (i, doc) in docs.into_iter().enumerate() {
        split[i % parts].push(doc);
    }
    split
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn corpus_parses_with_unique_ids_and_known_collections() {
        let docs = documents().expect("the shipped corpus parses");
        assert!((50..=80).contains(&docs.len()), "{} documents", docs.len());
        let ids: BTreeSet<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), docs.len(), "ids are unique");
        for doc in &docs {
            assert!(["guides", "faq", "notes"].contains(&doc.collection.as_str()), "{}", doc.id);
            assert!(doc.metadata.contains_key("topic"), "{} has a topic", doc.id);
            let words = doc.body.split_whitespace().count();
            assert!((60..=150).contains(&words), "{} has {words} words", doc.id);
        }
    }

    #[test]
    fn demo_queries_match_documents_in_every_round_robin_part() {
        let docs = documents().expect("parses");
        for parts in 1..=4 {
            for (n, part) in round_robin(docs.clone(), parts).iter().enumerate() {
                for terms in [&["certificate", "rotation"][..], &["replication"], &["health", "check"]] {
                    let hit = part.iter().any(|d| {
                        let text = format!("{} {}", d.title, d.body).to_lowercase();
                        terms.iter().all(|t| text.contains(t))
                    });
                    assert!(hit, "part {n} of {parts} has no document with {terms:?}");
                }
            }
        }
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let docs = documents().expect("parses");
        let total = docs.len();
        let split = round_robin(docs, 3);
        assert_eq!(split.iter().map(Vec::len).sum::<usize>(), total);
        let sizes: Vec<usize> = split.iter().map(Vec::len).collect();
        assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1, "{sizes:?}");
    }
}
