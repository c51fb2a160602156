//! Fuzz target for the query path: text (and a collections filter cut from it) goes through
//! validation, the structural check, tantivy's lenient query parser, the ACL filter and a real
//! search over a small index, on a thread with a tokio blocking thread's 2 MiB stack. Any input
//! must yield hits or a clear error, never a panic or a stack overflow.
//!
//! Half the inputs are raw text; the other half are structure-aware: the bytes pick query-syntax
//! tokens and repeat counts (see `common/expand.rs`), so deep nesting such as `(` x 400, `NOT `
//! chains, field groups and quotes hiding parentheses are reached in a few bytes.
//!
//! Run: `cd crates/index/fuzz && cargo +nightly fuzz run query_parse -- -max_total_time=600`

#![no_main]

#[path = "../common/expand.rs"]
mod expand;

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use ragmesh_index::{Acl, Document, DocumentIndex, MAX_QUERY_BYTES, SearchQuery, SubjectRef, Viewer};

/// Stack of a tokio blocking thread, where the agent runs searches.
const BLOCKING_THREAD_STACK: usize = 2 * 1024 * 1024;

/// Query-syntax pieces: what nests, what hides parentheses, what separates.
const TOKENS: &[&str] = &[
    "(", ")", "(", ")", "NOT ", "+", "-", "+(", "-(", "title:(", "f:(", "a", "b ", " ", "\t", "\"", "'", "\\", "/",
    "[", "]", "{", "}", " TO ", "IN [", "title:", "body:*", "*", "^2", "~1", " AND ", " OR ", ":", ">", "<=", "\\(",
    ")^1.5", "é", "2", "alpha", "東京",
];

fn index() -> Arc<DocumentIndex> {
    static INDEX: OnceLock<(tempfile::TempDir, Arc<DocumentIndex>)> = OnceLock::new();
    let (_, index) = INDEX.get_or_init(|| {
        // libfuzzer-sys aborts on every panic, even one `DocumentIndex::search` catches on
        // purpose (tantivy's known excluded-phrase panic). Restore the default hook: a panic
        // that escapes our code still aborts through libfuzzer-sys's own catch_unwind.
        drop(std::panic::take_hook());
        let dir = tempfile::tempdir().expect("tempdir");
        let index = DocumentIndex::open(dir.path()).expect("open");
        let docs = ["alpha beta", "gamma \"delta\" epsilon", "title:zeta AND eta", "naïve café 東京"]
            .iter()
            .enumerate()
            .map(|(i, body)| Document {
                id: format!("d{i}"),
                collection: if i % 2 == 0 { "a".into() } else { "b".into() },
                title: format!("doc {i}"),
                body: (*body).to_owned(),
                metadata: Default::default(),
                acl: if i % 2 == 0 { Acl::public() } else { Acl::tenant("t") },
            })
            .collect();
        index.upsert(docs).expect("seed");
        (dir, Arc::new(index))
    });
    Arc::clone(index)
}

fn viewer(byte: Option<u8>) -> Viewer {
    match byte.map(|b| b % 3) {
        Some(0) => Viewer::Anonymous,
        Some(1) => Viewer::Principal(SubjectRef { tenant: "t".into(), subject: "s".into() }),
        _ => Viewer::Unrestricted,
    }
}

fn search_on_blocking_stack(q: SearchQuery) {
    let index = index();
    std::thread::Builder::new()
        .stack_size(BLOCKING_THREAD_STACK)
        .spawn(move || {
            let _ = index.search(&q);
        })
        .expect("spawn search thread")
        .join()
        .expect("search panicked");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let q = if mode % 2 == 0 {
        let text = String::from_utf8_lossy(rest);
        let (query, filter) = text.split_once('\n').unwrap_or((&text, ""));
        let collections: Vec<String> = filter.split(',').filter(|c| !c.is_empty()).take(4).map(str::to_owned).collect();
        let limit = usize::from(rest.first().copied().unwrap_or(0));
        SearchQuery { query: query.to_owned(), collections, limit, min_score: 0.0, viewer: viewer(Some(mode / 2)) }
    } else {
        // A little over the byte limit, so the length check is exercised too.
        let query = expand::expand(rest, TOKENS, MAX_QUERY_BYTES + 64);
        SearchQuery { query, viewer: viewer(Some(mode / 2)), ..SearchQuery::default() }
    };
    search_on_blocking_stack(q);
});
