//! Test-only helpers: a fresh index in a temporary directory, a public document, and access
//! to the shared vaswani data set (a skip on a workstation, a failure under CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Acl, Document, DocumentIndex};

/// A fresh index in a temporary directory (kept while the directory lives).
pub(crate) fn open_temp() -> (tempfile::TempDir, DocumentIndex) {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = DocumentIndex::open(dir.path()).expect("open fresh index");
    (dir, index)
}

/// A public document (the anonymous default viewer sees it; ACL tests set their own).
pub(crate) fn doc(collection: &str, id: &str, title: &str, body: &str) -> Document {
    Document {
        id: id.to_owned(),
        collection: collection.to_owned(),
        title: title.to_owned(),
        body: body.to_owned(),
        metadata: BTreeMap::new(),
        acl: Acl::public(),
    }
}

/// Reads `name` from `../shared/data/vaswani` beside the checkout.
///
/// When the file is unreadable the test is skipped with a `skipped: ...` line, except when the
/// `CI` environment variable is set: there a missing data set must fail the build, or the test
/// would silently pass without testing anything.
pub(crate) fn vaswani_file(name: &str) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/vaswani").join(name);
    read_or_skip(&path, std::env::var_os("CI").is_some())
}

fn read_or_skip(path: &Path, under_ci: bool) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if under_ci => panic!(
            "CI is set but the vaswani data set is missing ({}: {err}): provide ../shared/data/vaswani \
             (doc-text.trec and qrels) on the CI runner",
            path.display()
        ),
        Err(err) => {
            println!(
                "skipped: {} is not readable ({err}); put the vaswani data set in ../shared/data/vaswani \
                 to run this test (CI requires it)",
                path.display()
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_data_set_is_a_skip_on_a_workstation() {
        assert_eq!(read_or_skip(Path::new("/nonexistent/vaswani/doc-text.trec"), false), None);
    }

    #[test]
    #[should_panic(expected = "CI is set but the vaswani data set is missing")]
    fn a_missing_data_set_fails_under_ci() {
        read_or_skip(Path::new("/nonexistent/vaswani/doc-text.trec"), true);
    }
}
