//! JSON lines parser: one document object per line.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::IngestError;
use crate::Document;

/// Parses JSON lines into documents; blank lines are skipped.
///
/// Each line is an object `{"id", "collection"?, "title"?, "body" or "text", "metadata"?}`.
/// `id` may be a string or an integer; `collection` defaults to `default_collection`; a missing
/// title stays empty (a hit shows the body's first words); metadata values may be strings, numbers or
/// booleans (kept as their JSON text). Unknown fields are ignored. Errors give the 1-based line.
pub fn parse_jsonl(text: &str, default_collection: &str) -> Result<Vec<Document>, IngestError> {
    let mut docs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let line_number = index + 1;
        let record = parse_record(line, default_collection)
            .map_err(|reason| IngestError::Jsonl { line: line_number, reason })?;
        docs.push(record);
    }
    Ok(docs)
}

fn parse_record(line: &str, default_collection: &str) -> Result<Document, String> {
    let value: Value = serde_json::from_str(line).map_err(|err| {
        // serde_json appends "at line 1 column N"; the line is always 1 here, keep the column.
        let message = err.to_string();
        let location = format!(" at line {} column {}", err.line(), err.column());
        let message = message.strip_suffix(&location).unwrap_or(&message);
        format!("invalid JSON at column {}: {message}", err.column())
    })?;
    let Value::Object(object) = value else {
        return Err(format!(
            "expected a JSON object like {{\"id\": \"1\", \"body\": \"...\"}}, found {}",
            kind(&value)
        ));
    };

    let id = match object.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(Value::Number(number)) if number.is_i64() || number.is_u64() => number.to_string(),
        Some(other) => return Err(format!("\"id\" must be a string, found {}", kind(other))),
        None => return Err("missing \"id\": every record needs one".to_owned()),
    };
    let collection = optional_string(&object, "collection")?.unwrap_or_else(|| default_collection.to_owned());
    let body = match (optional_string(&object, "body")?, optional_string(&object, "text")?) {
        (Some(body), None) | (None, Some(body)) => body,
        (Some(_), Some(_)) => {
            return Err("record has both \"body\" and \"text\": keep only one".to_owned());
        }
        (None, None) => {
            return Err("record has no \"body\" (or \"text\"): add the document text".to_owned());
        }
    };
    let title = optional_string(&object, "title")?.unwrap_or_default();
    let metadata = match object.get("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(entries)) => metadata_from(entries)?,
        Some(other) => {
            return Err(format!("\"metadata\" must be an object of strings, found {}", kind(other)));
        }
    };
    let acl = match object.get("acl") {
        None | Some(Value::Null) => crate::Acl::default(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|err| {
            format!("\"acl\" must look like {{\"public\": true, \"tenants\": [\"acme\"], \"subjects\": [{{\"tenant\": \"acme\", \"subject\": \"alice\"}}]}}: {err}")
        })?,
    };
    Ok(Document { id, collection, title, body, metadata, acl })
}

fn optional_string(object: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(format!("\"{key}\" must be a string, found {}", kind(other))),
    }
}

fn metadata_from(entries: &Map<String, Value>) -> Result<BTreeMap<String, String>, String> {
    let mut metadata = BTreeMap::new();
    for (key, value) in entries {
        let text = match value {
            Value::String(text) => text.clone(),
            Value::Number(_) | Value::Bool(_) => value.to_string(),
            other => {
                return Err(format!(
                    "metadata value {key:?} must be a string, number or boolean, found {}",
                    kind(other)
                ));
            }
        };
        metadata.insert(key.clone(), text);
    }
    Ok(metadata)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_records_and_skips_blank_lines() {
        let text = concat!(
            "{\"id\": \"a\", \"title\": \"Alpha\", \"body\": \"first body\", \"metadata\": {\"lang\": \"en\", \"year\": 1999, \"ok\": true}}\n",
            "\n",
            "   \n",
            "{\"id\": 7, \"collection\": \"other\", \"text\": \"one two three four five six seven eight nine\", \"extra\": [1]}\r\n",
        );
        let docs = parse_jsonl(text, "default").expect("valid");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "a");
        assert_eq!(docs[0].collection, "default");
        assert_eq!(docs[0].title, "Alpha");
        assert_eq!(docs[0].metadata["lang"], "en");
        assert_eq!(docs[0].metadata["year"], "1999");
        assert_eq!(docs[0].metadata["ok"], "true");
        assert_eq!(docs[1].id, "7");
        assert_eq!(docs[1].collection, "other");
        assert_eq!(docs[1].title, "", "no title: none is made up");
    }

    fn error_of(text: &str) -> (usize, String) {
        match parse_jsonl(text, "c") {
            Err(IngestError::Jsonl { line, reason }) => (line, reason),
            other => panic!("expected a jsonl error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let good = "{\"id\":\"1\",\"body\":\"b\"}\n";
        let cases = [
            ("{not json}", "invalid JSON at column 2"),
            ("[1, 2]", "expected a JSON object"),
            ("{\"body\": \"b\"}", "missing \"id\""),
            ("{\"id\": [1], \"body\": \"b\"}", "\"id\" must be a string, found an array"),
            ("{\"id\": \"1\"}", "no \"body\""),
            ("{\"id\": \"1\", \"body\": \"b\", \"text\": \"t\"}", "both \"body\" and \"text\""),
            ("{\"id\": \"1\", \"body\": 5}", "\"body\" must be a string, found a number"),
            ("{\"id\": \"1\", \"body\": \"b\", \"metadata\": {\"k\": {}}}", "metadata value \"k\""),
            ("{\"id\": \"1\", \"body\": \"b\", \"metadata\": \"x\"}", "\"metadata\" must be an object"),
        ];
        for (bad, expected) in cases {
            let text = format!("{good}\n{good}{bad}\n{good}");
            let (line, reason) = error_of(&text);
            assert_eq!(line, 4, "{bad}");
            assert!(reason.contains(expected), "{bad}: {reason}");
            assert!(!reason.contains("at line 1"), "{reason}");
        }
        let err = parse_jsonl("{\"id\": 1.5, \"body\": \"b\"}", "c").expect_err("fractional id");
        assert_eq!(err.to_string(), "line 1: \"id\" must be a string, found a number");
    }

    /// Runs `f` on a thread with the stack of a tokio blocking thread (where the CLI parses).
    fn on_blocking_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("parser thread panicked")
    }

    #[test]
    fn regression_deeply_nested_json_is_an_error_not_a_stack_overflow() {
        // serde_json's recursive parser stops at 128 levels ("recursion limit exceeded"), as long
        // as nobody in the tree enables its `unbounded_depth` feature: this pins both.
        let deep = 100_000;
        let lines = [
            "[".repeat(deep),
            "{\"a\":".repeat(deep),
            format!("{{\"id\":\"1\",\"body\":\"b\",\"metadata\":{{\"k\":{}}}}}", "[".repeat(deep)),
            format!("{{\"id\":\"1\",\"body\":\"b\",\"acl\":{}}}", "{\"tenants\":".repeat(deep)),
        ];
        for line in lines {
            let (line_number, reason) = on_blocking_stack(move || error_of(&line));
            assert_eq!(line_number, 1);
            assert!(reason.contains("recursion limit exceeded"), "{reason}");
        }
    }

    #[test]
    fn values_just_under_the_recursion_limit_are_refused_and_dropped_safely() {
        // 124 levels (126 with the record and metadata objects) parse into a `Value`, which is then refused (metadata values are flat) and
        // dropped recursively: both must fit a blocking thread's stack.
        let nested = format!("{}1{}", "[".repeat(124), "]".repeat(124));
        let metadata = format!("{{\"id\":\"1\",\"body\":\"b\",\"metadata\":{{\"k\":{nested}}}}}");
        let (_, reason) = on_blocking_stack(move || error_of(&metadata));
        assert!(reason.contains("metadata value \"k\" must be a string"), "{reason}");
        let acl = format!("{{\"id\":\"1\",\"body\":\"b\",\"acl\":{{\"tenants\":{nested}}}}}");
        let (_, reason) = on_blocking_stack(move || error_of(&acl));
        assert!(reason.contains("\"acl\" must look like"), "{reason}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn serialized_documents_round_trip(
            docs in proptest::collection::vec(
                ("\\PC{1,12}", "[a-z]{1,8}", "\\PC{0,20}", "\\PC{0,40}",
                 proptest::collection::btree_map("[a-z]{1,5}", "\\PC{0,8}", 0..3)),
                0..6,
            )
        ) {
            let mut text = String::new();
            let mut expected = Vec::new();
            for (id, collection, title, body, metadata) in docs {
                let doc = Document { id, collection, title, body, metadata, acl: crate::Acl::default() };
                text.push_str(&serde_json::to_string(&doc).expect("serializable"));
                text.push('\n');
                expected.push(doc);
            }
            prop_assert_eq!(parse_jsonl(&text, "default").expect("round trip"), expected);
        }
    }
}
