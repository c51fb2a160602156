//! Relevance judgments (qrels): lines `qid iter docno rel`, `iter` ignored, `rel` an integer grade
//! (graded relevance allowed; >= 1 is relevant, 0 judged non-relevant, negative "in the pool but
//! not judged", as trec_eval reads them). Lines starting with `#` and blank lines are skipped.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use crate::lines::Lines;
use crate::{Error, check_id};

/// The grade from which a judged document counts as relevant for MAP and P (trec_eval's default
/// `-l 1`). nDCG uses the grades themselves as gains.
pub const RELEVANCE_LEVEL: i32 = 1;

/// The judgments of a test collection, by query id, then docno.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Qrels {
    by_query: BTreeMap<String, HashMap<String, i32>>,
}

impl Qrels {
    /// No judgments.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record that `docno` has grade `rel` for `query`. Judging the same pair twice is an error.
    pub fn insert(&mut self, query: &str, docno: &str, rel: i32) -> Result<(), Error> {
        check_id("query id", query)?;
        check_id("docno", docno)?;
        let judgments = self.by_query.entry(query.to_owned()).or_default();
        if judgments.insert(docno.to_owned(), rel).is_some() {
            return Err(Error::DuplicateJudgment { query: query.to_owned(), docno: docno.to_owned() });
        }
        Ok(())
    }

    /// Read a qrels file.
    pub fn read_file(path: &Path) -> Result<Self, Error> {
        let file = std::fs::File::open(path).map_err(|e| Error::from(e).in_file(path))?;
        Self::read(std::io::BufReader::new(file)).map_err(|e| e.in_file(path))
    }

    /// Read qrels from `reader`: exactly four whitespace-separated fields per line, an integer
    /// grade, no pair judged twice; anything else is an error naming the line.
    pub fn read(reader: impl BufRead) -> Result<Self, Error> {
        let mut qrels = Self::new();
        let mut lines = Lines::new(reader);
        while let Some((line_no, line)) = lines.next_line()? {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            let [query, _iter, docno, rel] = fields[..] else {
                return Err(Error::Parse {
                    line: line_no,
                    message: format!("expected 4 fields `qid iter docno rel`, found {}", fields.len()),
                });
            };
            let rel: i32 = rel
                .parse()
                .map_err(|_| Error::Parse { line: line_no, message: format!("relevance {rel:?} is not an integer") })?;
            qrels.insert(query, docno, rel).map_err(|e| Error::Parse { line: line_no, message: e.to_string() })?;
        }
        Ok(qrels)
    }

    /// The judgments for `query` (docno -> grade), or `None` if the query has none at all.
    pub fn judgments(&self, query: &str) -> Option<&HashMap<String, i32>> {
        self.by_query.get(query)
    }

    /// The grade of `docno` for `query`, if judged.
    pub fn grade(&self, query: &str, docno: &str) -> Option<i32> {
        self.by_query.get(query)?.get(docno).copied()
    }

    /// Query ids with at least one judgment, in ascending string order.
    pub fn queries(&self) -> impl Iterator<Item = &str> {
        self.by_query.keys().map(String::as_str)
    }

    /// How many queries have at least one judgment.
    pub fn num_queries(&self) -> usize {
        self.by_query.len()
    }

    /// How many judgments in total.
    pub fn num_judgments(&self) -> usize {
        self.by_query.values().map(HashMap::len).sum()
    }

    /// How many documents are relevant (grade >= [`RELEVANCE_LEVEL`]) for `query`.
    pub fn num_relevant(&self, query: &str) -> usize {
        self.by_query.get(query).map_or(0, |j| j.values().filter(|&&rel| rel >= RELEVANCE_LEVEL).count())
    }

    /// The positive grades of `query`'s judgments, highest first: the ideal ranking's gains.
    pub fn ideal_gains(&self, query: &str) -> Vec<i32> {
        let mut gains: Vec<i32> =
            self.by_query.get(query).map_or_else(Vec::new, |j| j.values().copied().filter(|&rel| rel > 0).collect());
        gains.sort_unstable_by(|a, b| b.cmp(a));
        gains
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_graded_judgments_comments_and_blank_lines() {
        let qrels =
            Qrels::read("# comment\n1 0 d1 1\n1 0 d2 0\n\n1 0 d3 3\r\n2\t0\td1\t-1\n".as_bytes()).expect("parse");
        assert_eq!(qrels.num_queries(), 2);
        assert_eq!(qrels.num_judgments(), 4);
        assert_eq!(qrels.grade("1", "d3"), Some(3));
        assert_eq!(qrels.num_relevant("1"), 2);
        assert_eq!(qrels.num_relevant("2"), 0);
        assert_eq!(qrels.ideal_gains("1"), vec![3, 1]);
        assert!(qrels.judgments("2").is_some());
        assert!(qrels.judgments("3").is_none());
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, u64, &str)] = &[
            ("1 0 d1 1\n1 0 d2\n", 2, "expected 4 fields"),
            ("1 0 d1 1\n1 0 d2 1 extra\n", 2, "found 5"),
            ("1 0 d1 yes\n", 1, "not an integer"),
            ("1 0 d1 1\n2 0 d1 1\n1 0 d1 0\n", 3, "judged twice"),
        ];
        for (text, line, needle) in cases {
            match Qrels::read(text.as_bytes()) {
                Err(Error::Parse { line: got, message }) => {
                    assert_eq!(got, *line, "{text:?}: {message}");
                    assert!(message.contains(needle), "{text:?}: {message}");
                }
                other => panic!("{text:?}: expected a parse error, got {other:?}"),
            }
        }
    }
}
