//! Test-only access to the shared vaswani data set: a skip on a workstation, a failure under CI.

use std::path::{Path, PathBuf};

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
