//! Fuzz target for the ingest parsers (TREC, JSON lines and plain text), which read files
//! operators did not write themselves: any input must parse or fail with an error, never panic
//! or overflow the stack of the tokio blocking thread (2 MiB) the CLI parses on.
//!
//! Half the inputs are raw bytes; the other half are structure-aware: the bytes pick JSON and
//! TREC tokens and repeat counts (see `common/expand.rs`), so 100k-deep arrays and objects,
//! deep values inside metadata and acl, and long runs of repeated or nested tags are reached.
//!
//! Run: `cd crates/index/fuzz && cargo +nightly fuzz run ingest_parse -- -max_total_time=600`

#![no_main]

#[path = "../common/expand.rs"]
mod expand;

use libfuzzer_sys::fuzz_target;
use ragmesh_index::ingest::{document_from_text_file, parse_jsonl, parse_trec};

/// Stack of a tokio blocking thread, where the CLI reads files.
const BLOCKING_THREAD_STACK: usize = 2 * 1024 * 1024;
/// Largest structured input; enough for nesting far past every parser's limit.
const MAX_STRUCTURED_BYTES: usize = 256 * 1024;

const TOKENS: &[&str] = &[
    // JSON
    "[",
    "]",
    "{",
    "}",
    "\"a\":",
    ",",
    "1",
    "\"s\"",
    "null",
    "\n",
    "\\",
    "\"",
    "{\"id\":\"1\",\"body\":\"b\",\"metadata\":",
    "{\"id\":\"1\",\"body\":\"b\",\"acl\":",
    "{\"id\":1,\"text\":\"t\"}\n",
    "{\"tenants\":",
    "{\"subjects\":[",
    // TREC
    "<DOC>",
    "</DOC>",
    "<DOCNO>",
    "</DOCNO>",
    "<TEXT>",
    "</TEXT>",
    "<TITLE>",
    "</TITLE>",
    "<HEADLINE>",
    "<P>",
    "</P>",
    "<F P=1 ",
    "<",
    ">",
    "/",
    "<doc>",
    " ",
    "é",
    "東",
    // markdown
    "# ",
    "```\n",
    "~~~",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        expand::expand(rest, TOKENS, MAX_STRUCTURED_BYTES)
    };
    std::thread::Builder::new()
        .stack_size(BLOCKING_THREAD_STACK)
        .spawn(move || {
            let _ = parse_trec(&text, "fuzz");
            let _ = parse_jsonl(&text, "fuzz");
            let _ = document_from_text_file("fuzz.md", &text, "fuzz");
        })
        .expect("spawn parser thread")
        .join()
        .expect("parser panicked");
});
