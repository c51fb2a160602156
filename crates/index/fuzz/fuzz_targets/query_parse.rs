//! Fuzz target for the query path: arbitrary text (and a collections filter cut from it) goes
//! through validation, tantivy's lenient query parser, the ACL filter and a real search over a
//! small index. Any input must yield hits or a clear error, never a panic.
//!
//! Run: `cd crates/index/fuzz && cargo +nightly fuzz run query_parse -- -max_total_time=120`

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ragmesh_index::{Acl, Document, DocumentIndex, SearchQuery, SubjectRef, Viewer};

fn index() -> &'static DocumentIndex {
    static INDEX: OnceLock<(tempfile::TempDir, DocumentIndex)> = OnceLock::new();
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
        (dir, index)
    });
    index
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (query, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let collections: Vec<String> = rest.split(',').filter(|c| !c.is_empty()).take(4).map(str::to_owned).collect();
    let viewer = match data.first().map(|b| b % 3) {
        Some(0) => Viewer::Anonymous,
        Some(1) => Viewer::Principal(SubjectRef { tenant: "t".into(), subject: "s".into() }),
        _ => Viewer::Unrestricted,
    };
    let limit = usize::from(data.get(1).copied().unwrap_or(0));
    let q = SearchQuery { query: query.to_owned(), collections, limit, min_score: 0.0, viewer };
    let _ = index().search(&q);
});
