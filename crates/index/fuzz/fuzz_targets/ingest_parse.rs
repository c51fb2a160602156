//! Fuzz target for the ingest parsers (TREC and JSON lines), which read files operators did not
//! write themselves: any input must parse or fail with an error, never panic.
//!
//! Run: `cd crates/index/fuzz && cargo +nightly fuzz run ingest_parse -- -max_total_time=120`

#![no_main]

use libfuzzer_sys::fuzz_target;
use ragmesh_index::ingest::{parse_jsonl, parse_trec};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_trec(&text, "fuzz");
    let _ = parse_jsonl(&text, "fuzz");
});
