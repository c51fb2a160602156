//! Domain types exchanged with the index (documents, queries, hits) and their validation rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::IndexError;
use crate::access::{Acl, Viewer};

/// Longest accepted document id, in bytes.
pub const MAX_ID_BYTES: usize = 512;
/// Longest accepted collection name, in characters (all ASCII).
pub const MAX_COLLECTION_CHARS: usize = 64;
/// Largest accepted title, and separately body, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;
/// Most documents (or references) accepted in one write call.
pub const MAX_BATCH: usize = 10_000;
/// Number of leading body words shown as the title of a document that has none.
pub const DISPLAY_TITLE_WORDS: usize = 8;

/// What a hit shows as the title of a document without one: the first words of its body. For
/// display only: a title made from the body is never indexed, since repeating the first words in
/// the title field boosts whatever they contain (on the NPL collection it cost 16 % of nDCG@10).
pub fn display_title(body: &str) -> String {
    let words: Vec<&str> = body.split_whitespace().take(DISPLAY_TITLE_WORDS).collect();
    words.join(" ")
}

/// A document to index. `(collection, id)` identifies it; writing the same pair again replaces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Identifier, unique within the collection (1 to 512 bytes).
    pub id: String,
    /// Collection name: 1-64 characters from `A-Z a-z 0-9 _ . -`.
    pub collection: String,
    /// Title; searched with a higher weight than the body.
    pub title: String,
    /// Full text.
    pub body: String,
    /// Free-form key/value pairs, stored and returned with hits but not searched.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Who may read the document; empty means operators only.
    #[serde(default)]
    pub acl: Acl,
}

/// Names one document for deletion.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocRef {
    /// Collection of the document.
    pub collection: String,
    /// Id of the document within its collection.
    pub id: String,
}

/// A full-text search request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchQuery {
    /// Natural-language query or tantivy query syntax; parsed leniently.
    pub query: String,
    /// Collections to search; empty means all.
    pub collections: Vec<String>,
    /// Maximum number of hits; 0 means the default (10); clamped to 1000.
    pub limit: usize,
    /// Hits scoring below this are dropped.
    pub min_score: f32,
    /// Who is searching: hits are limited to documents whose ACL admits them.
    pub viewer: Viewer,
}

/// One matching document.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// Document id.
    pub id: String,
    /// Document collection.
    pub collection: String,
    /// Document title.
    pub title: String,
    /// HTML fragment of the body with matched terms wrapped in `<b></b>`; other text is escaped.
    pub snippet: String,
    /// BM25 score.
    pub score: f32,
    /// Stored metadata of the document.
    pub metadata: BTreeMap<String, String>,
}

/// The answer to a [`SearchQuery`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchResults {
    /// Hits by score descending, ties by `(collection, id)` ascending.
    pub hits: Vec<SearchHit>,
    /// Number of matching documents before `limit` and `min_score` were applied.
    pub total_matches: u64,
    /// Index generation the search ran against.
    pub generation: u64,
}

/// Number of live documents in one collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionCount {
    /// Collection name.
    pub name: String,
    /// Live (not deleted) documents in it.
    pub doc_count: u64,
}

/// Returns why `name` is not an acceptable collection name, if it is not.
pub(crate) fn collection_problem(name: &str) -> Option<String> {
    let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !name.is_empty() && name.len() <= MAX_COLLECTION_CHARS && valid_chars {
        return None;
    }
    Some(format!("collection {name:?} is invalid: use 1-{MAX_COLLECTION_CHARS} characters from A-Z a-z 0-9 _ . -"))
}

fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("id is empty: give every document a non-empty id".to_owned());
    }
    if id.len() > MAX_ID_BYTES {
        return Some(format!("id is {} bytes, longer than the {MAX_ID_BYTES}-byte limit: use a shorter id", id.len()));
    }
    None
}

fn text_problem(what: &str, text: &str) -> Option<String> {
    if text.len() > MAX_TEXT_BYTES {
        return Some(format!(
            "{what} is {} bytes, larger than the {MAX_TEXT_BYTES}-byte limit: split the document",
            text.len()
        ));
    }
    None
}

/// Shortens an id for an error message so a huge id does not make a huge error.
fn id_for_message(id: &str) -> String {
    const SHOWN: usize = 80;
    if id.len() <= SHOWN {
        return id.to_owned();
    }
    let mut end = SHOWN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &id[..end])
}

fn invalid(position: usize, id: &str, reason: String) -> IndexError {
    IndexError::InvalidDocument { position, id: id_for_message(id), reason }
}

/// Rejects empty and oversized batches.
pub(crate) fn validate_batch_len(len: usize, what: &str) -> Result<(), IndexError> {
    if len == 0 {
        return Err(IndexError::InvalidBatch(format!("{what} batch is empty: send at least one document")));
    }
    if len > MAX_BATCH {
        return Err(IndexError::InvalidBatch(format!(
            "{what} batch has {len} documents, more than the {MAX_BATCH} limit: split it into smaller batches"
        )));
    }
    Ok(())
}

/// Checks one document of a batch; `position` is its zero-based index in the batch.
pub(crate) fn validate_document(position: usize, doc: &Document) -> Result<(), IndexError> {
    let problem = id_problem(&doc.id)
        .or_else(|| collection_problem(&doc.collection))
        .or_else(|| doc.acl.problem())
        .or_else(|| text_problem("title", &doc.title))
        .or_else(|| text_problem("body", &doc.body));
    match problem {
        Some(reason) => Err(invalid(position, &doc.id, reason)),
        None => Ok(()),
    }
}

/// Checks one reference of a delete batch; `position` is its zero-based index in the batch.
pub(crate) fn validate_ref(position: usize, doc_ref: &DocRef) -> Result<(), IndexError> {
    let problem = id_problem(&doc_ref.id).or_else(|| collection_problem(&doc_ref.collection));
    match problem {
        Some(reason) => Err(invalid(position, &doc_ref.id, reason)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, collection: &str) -> Document {
        Document {
            id: id.to_owned(),
            collection: collection.to_owned(),
            title: String::new(),
            body: String::new(),
            metadata: BTreeMap::new(),
            acl: Acl::default(),
        }
    }

    #[test]
    fn collection_names() {
        for ok in ["a", "A_b.c-9", &"x".repeat(64)] {
            assert_eq!(collection_problem(ok), None, "{ok}");
        }
        for bad in ["", "a b", "é", "a/b", &"x".repeat(65)] {
            assert!(collection_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn error_message_names_position_and_reason() {
        let err = validate_document(3, &doc("x", "a b")).expect_err("space is not allowed");
        assert_eq!(
            err.to_string(),
            r#"document 3 (id "x"): collection "a b" is invalid: use 1-64 characters from A-Z a-z 0-9 _ . -"#
        );
    }

    #[test]
    fn id_limits() {
        assert!(validate_document(0, &doc("", "c")).is_err());
        assert!(validate_document(0, &doc(&"i".repeat(512), "c")).is_ok());
        let err = validate_document(0, &doc(&"i".repeat(513), "c")).expect_err("too long");
        let message = err.to_string();
        assert!(message.contains("513 bytes"), "{message}");
        assert!(message.len() < 300, "long ids are shortened: {message}");
    }

    #[test]
    fn text_limits() {
        let mut d = doc("i", "c");
        d.body = "b".repeat(MAX_TEXT_BYTES);
        assert!(validate_document(0, &d).is_ok());
        d.body.push('b');
        assert!(validate_document(0, &d).is_err());
        d.body.clear();
        d.title = "t".repeat(MAX_TEXT_BYTES + 1);
        assert!(validate_document(0, &d).is_err());
    }

    #[test]
    fn batch_limits() {
        assert!(validate_batch_len(0, "upsert").is_err());
        assert!(validate_batch_len(1, "upsert").is_ok());
        assert!(validate_batch_len(MAX_BATCH, "upsert").is_ok());
        assert!(validate_batch_len(MAX_BATCH + 1, "upsert").is_err());
    }

    #[test]
    fn document_serde_round_trip_and_default_metadata() {
        let parsed: Document = serde_json::from_str(r#"{"id":"1","collection":"c","title":"t","body":"b"}"#)
            .expect("metadata is optional");
        assert!(parsed.metadata.is_empty());
        let text = serde_json::to_string(&parsed).expect("serializable");
        let back: Document = serde_json::from_str(&text).expect("round trip");
        assert_eq!(back, parsed);
    }
}
