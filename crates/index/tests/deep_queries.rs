//! Issue 6.1, "a query can kill every agent": deeply nested queries are refused before tantivy's
//! recursive query parser sees them, and every query the structural check accepts parses and
//! runs on a small stack.

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use ragmesh_index::{Acl, Document, DocumentIndex, IndexError, SearchQuery};
use ragmesh_types::query::{QueryLimits, measure};
use tantivy::query_grammar::UserInputAst;

/// Stack size of a tokio blocking thread, where the agent runs searches.
const BLOCKING_THREAD_STACK: usize = 2 * 1024 * 1024;
/// A quarter of it: accepted queries must fit with a wide margin.
const SMALL_STACK: usize = 512 * 1024;
/// Set in the child process that demonstrates the overflow without the guard.
const CHILD_ENV: &str = "RAGMESH_DEEP_QUERY_CHILD";

/// Runs `f` on a fresh thread with `stack` bytes of stack, as a tokio blocking thread would.
fn on_stack<T: Send + 'static>(stack: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(stack)
        .spawn(f)
        .expect("spawn search thread")
        .join()
        .expect("search thread panicked")
}

/// One shared index with a few documents (opening one per proptest case would dominate the run).
fn index() -> Arc<DocumentIndex> {
    static INDEX: OnceLock<(tempfile::TempDir, Arc<DocumentIndex>)> = OnceLock::new();
    let (_, index) = INDEX.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = DocumentIndex::open(dir.path()).expect("open index");
        let docs = ["a b", "title words here", "naïve (café) a"]
            .iter()
            .enumerate()
            .map(|(i, body)| Document {
                id: format!("d{i}"),
                collection: "c".to_owned(),
                title: format!("doc {i}"),
                body: (*body).to_owned(),
                metadata: Default::default(),
                acl: Acl::public(),
            })
            .collect();
        index.upsert(docs).expect("seed");
        (dir, Arc::new(index))
    });
    Arc::clone(index)
}

fn search_on_stack(stack: usize, text: String) -> Result<u64, IndexError> {
    let index = index();
    on_stack(stack, move || {
        index.search(&SearchQuery { query: text, ..SearchQuery::default() }).map(|r| r.total_matches)
    })
}

/// Well-formed queries of about 2 KB (under the 4 KiB limit) that nest 400 deep, one per
/// construct that makes tantivy's parser recurse.
fn hostile_queries() -> Vec<(&'static str, String)> {
    let n = 400;
    vec![
        ("parentheses", format!("{}a{}", "(".repeat(n), ")".repeat(n))),
        ("unclosed parentheses", "(".repeat(n)),
        ("field groups", format!("{}a{}", "f:(".repeat(n), ")".repeat(n))),
        ("NOT chain", format!("{}a", "NOT ".repeat(n))),
        ("NOT groups", format!("{}a{}", "NOT (".repeat(n), ")".repeat(n))),
        ("occur groups", format!("{}a{}", "+(-(".repeat(n / 2), ")".repeat(n))),
        ("boosted groups", format!("{}a{}", "(".repeat(n), ")^2".repeat(n))),
        ("groups of two", format!("{}a{}", "(b ".repeat(n), ")".repeat(n))),
    ]
}

#[test]
fn regression_deeply_nested_query_is_refused_not_a_stack_overflow() {
    // Without the structural check this aborts the whole test process (and, in production,
    // the agent): see `unguarded_tantivy_parser_overflows_on_the_regression_query`.
    for (what, text) in hostile_queries() {
        assert!(text.len() <= ragmesh_index::MAX_QUERY_BYTES, "{what}: {} bytes", text.len());
        match search_on_stack(BLOCKING_THREAD_STACK, text) {
            Err(err @ IndexError::QueryTooComplex(_)) => {
                let message = err.to_string();
                assert!(message.contains("00 deep; the limit is 32: simplify the query"), "{what}: {message}");
            }
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
    }
}

#[test]
fn unguarded_tantivy_parser_overflows_on_the_regression_query() {
    // Proves the regression test can fail: the same query, parsed by tantivy without the check
    // on a blocking thread's stack, aborts the process. Run in a child process for that reason.
    if std::env::var_os(CHILD_ENV).is_some() {
        let text = hostile_queries().swap_remove(0).1;
        on_stack(BLOCKING_THREAD_STACK, move || {
            let (ast, _errors) = tantivy::query_grammar::parse_query_lenient(&text);
            drop(ast);
        });
        return;
    }
    let exe = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(exe)
        .args(["--exact", "unguarded_tantivy_parser_overflows_on_the_regression_query", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "tantivy parsed 400 nested groups on 2 MiB: is the guard still needed?");
    assert!(stderr.contains("has overflowed its stack"), "child failed differently: {stderr}");
}

#[test]
fn limit_depth_queries_run_on_a_small_stack() {
    let depth = QueryLimits::default().max_depth;
    let text = format!("{}a b{}", "NOT (".repeat(depth / 2), ")".repeat(depth / 2));
    assert_eq!(measure(&text).depth, depth);
    search_on_stack(SMALL_STACK, text).expect("a query at the limit runs");
}

/// Depth of nested clauses in tantivy's AST. Boosts are not counted (each sits on a leaf or a
/// group); one level of the grammar can still add up to three clauses (the list, an `AND` run
/// inside it, the `MustNot` wrapper of `NOT` or of `OR -x`).
fn clause_depth(ast: &UserInputAst) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(ast, 0)];
    while let Some((node, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match node {
            UserInputAst::Clause(children) => stack.extend(children.iter().map(|(_, child)| (child, depth + 1))),
            UserInputAst::Boost(inner, _) => stack.push((inner, depth)),
            UserInputAst::Leaf(_) => {}
        }
    }
    deepest
}

/// Pieces of tantivy's query syntax, weighted toward what opens nesting or hides parentheses.
fn piece() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => prop::sample::select(vec!["(", ")", "NOT ", "f:(", "+(", "-("]),
        3 => prop::sample::select(vec!["a", " ", "b ", "\"", "'", "\\", "/", "[", "]", "{", "}"]),
        2 => prop::sample::select(vec![
            " TO ", "IN [", "f:", "*", "^2", "~1", " AND ", " OR ", "\t", "é", ":", ">", "<=", "\\(", ")^1.5", "-"
        ]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The walk never reports less nesting than tantivy builds.
    #[test]
    fn measured_depth_bounds_tantivy_ast_depth(pieces in prop::collection::vec(piece(), 0..300)) {
        let text = pieces.concat();
        let shape = measure(&text);
        let probe = text.clone();
        // A big stack: this property compares depths, the next one checks small stacks.
        let ast_depth = on_stack(256 * 1024 * 1024, move || {
            let (ast, _) = tantivy::query_grammar::parse_query_lenient(&probe);
            clause_depth(&ast)
        });
        prop_assert!(ast_depth <= 3 * (shape.depth + 1), "{text:?}: tantivy depth {ast_depth}, measured {shape}");
    }

    /// Every query the check accepts parses and runs on a quarter of a blocking thread's stack.
    #[test]
    fn accepted_queries_run_on_a_small_stack(pieces in prop::collection::vec(piece(), 0..300)) {
        let text = pieces.concat();
        prop_assume!(text.len() <= ragmesh_index::MAX_QUERY_BYTES);
        match search_on_stack(SMALL_STACK, text.clone()) {
            Ok(_) => prop_assert!(ragmesh_types::query::check(text.trim(), &QueryLimits::default()).is_ok()),
            Err(IndexError::QueryTooComplex(_) | IndexError::InvalidQuery(_)) => {}
            Err(other) => prop_assert!(false, "{text:?}: {other}"),
        }
    }
}
