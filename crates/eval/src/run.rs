//! TREC run files: lines `qid Q0 docno rank score tag`, read and written, so a search's results
//! can be saved and evaluated or compared later (also by trec_eval itself).
//!
//! Ranking follows trec_eval, not the file's rank column: trec_eval stores each score as a C
//! `float` and sorts by score descending, breaking ties by docno descending (byte order, `strcmp`).
//! [`Run::ranked`] does the same, so equal scores never make the order depend on input order.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;

use crate::lines::Lines;
use crate::{Error, check_id};

/// The results of one system for a set of queries.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    tag: String,
    // docno -> score per query: a document appears at most once per query (trec_eval refuses a run
    // that repeats one), and the order is derived from the scores anyway.
    by_query: BTreeMap<String, HashMap<String, f64>>,
}

/// One retrieved document, as ranked by [`Run::ranked`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoredDoc<'a> {
    /// The document id.
    pub docno: &'a str,
    /// Its score for the query.
    pub score: f64,
}

impl Run {
    /// An empty run; `tag` names the system in the last column of a written run file.
    pub fn new(tag: &str) -> Result<Self, Error> {
        check_id("run tag", tag)?;
        Ok(Self { tag: tag.to_owned(), by_query: BTreeMap::new() })
    }

    /// The run's tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Add `docno` with `score` to `query`'s results. A document repeated for one query, an id
    /// with whitespace and a non-finite score are errors.
    pub fn push(&mut self, query: &str, docno: &str, score: f64) -> Result<(), Error> {
        check_id("query id", query)?;
        check_id("docno", docno)?;
        if !score.is_finite() {
            return Err(Error::NonFiniteScore { query: query.to_owned(), docno: docno.to_owned() });
        }
        let docs = self.by_query.entry(query.to_owned()).or_default();
        if docs.contains_key(docno) {
            return Err(Error::DuplicateDocument { query: query.to_owned(), docno: docno.to_owned() });
        }
        docs.insert(docno.to_owned(), score);
        Ok(())
    }

    /// Add an ordered list for `query` (best first) when only the order matters, as for a fused
    /// ranking: scores n, n-1, ..., 1, which trec_eval's ordering keeps as given.
    pub fn push_ranking<'d>(&mut self, query: &str, docnos: impl IntoIterator<Item = &'d str>) -> Result<(), Error> {
        let docnos: Vec<&str> = docnos.into_iter().collect();
        let n = docnos.len();
        for (i, docno) in docnos.into_iter().enumerate() {
            self.push(query, docno, (n - i) as f64)?;
        }
        Ok(())
    }

    /// Record `query` as asked but answered with nothing (it then counts as evaluated with all
    /// metrics 0, instead of being absent from the run).
    pub fn push_empty(&mut self, query: &str) -> Result<(), Error> {
        check_id("query id", query)?;
        self.by_query.entry(query.to_owned()).or_default();
        Ok(())
    }

    /// Query ids present in the run, ascending.
    pub fn queries(&self) -> impl Iterator<Item = &str> {
        self.by_query.keys().map(String::as_str)
    }

    /// Whether `query` is in the run (possibly with no documents).
    pub fn contains_query(&self, query: &str) -> bool {
        self.by_query.contains_key(query)
    }

    /// How many documents the run holds in total.
    pub fn len(&self) -> usize {
        self.by_query.values().map(HashMap::len).sum()
    }

    /// Whether the run holds no document at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `query`'s documents in trec_eval's order: score (as an f32, which is how trec_eval stores
    /// it) descending, then docno descending. Empty for a query not in the run.
    pub fn ranked(&self, query: &str) -> Vec<ScoredDoc<'_>> {
        let Some(docs) = self.by_query.get(query) else {
            return Vec::new();
        };
        let mut ranked: Vec<ScoredDoc<'_>> =
            docs.iter().map(|(docno, &score)| ScoredDoc { docno: docno.as_str(), score }).collect();
        ranked.sort_unstable_by(trec_eval_order);
        ranked
    }

    /// Read a run file.
    pub fn read_file(path: &Path) -> Result<Self, Error> {
        let file = std::fs::File::open(path).map_err(|e| Error::from(e).in_file(path))?;
        Self::read(std::io::BufReader::new(file)).map_err(|e| e.in_file(path))
    }

    /// Read a run from `reader`: six whitespace-separated fields per line (`qid Q0 docno rank
    /// score tag`), an integer rank (read, then ignored as trec_eval does), a finite score, no
    /// document twice for a query. The tag is the first line's (`run` for an empty file). Blank
    /// lines are skipped; anything else malformed is an error naming the line.
    pub fn read(reader: impl BufRead) -> Result<Self, Error> {
        let mut run: Option<Run> = None;
        let mut lines = Lines::new(reader);
        while let Some((line_no, line)) = lines.next_line()? {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| Error::Parse { line: line_no, message };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [query, _q0, docno, rank, score, tag] = fields[..] else {
                return Err(bad(format!("expected 6 fields `qid Q0 docno rank score tag`, found {}", fields.len())));
            };
            rank.parse::<i64>().map_err(|_| bad(format!("rank {rank:?} is not an integer")))?;
            let score: f64 = score.parse().map_err(|_| bad(format!("score {score:?} is not a number")))?;
            let run = match &mut run {
                Some(run) => run,
                None => run.insert(Run::new(tag).map_err(|e| bad(e.to_string()))?),
            };
            run.push(query, docno, score).map_err(|e| bad(e.to_string()))?;
        }
        match run {
            Some(run) => Ok(run),
            None => Run::new("run"),
        }
    }

    /// Write the run in trec_eval's order with ranks 1, 2, ... per query, queries ascending.
    /// Scores are written in Rust's shortest round-trip form, so reading the file back gives the
    /// same run. A query recorded with [`Run::push_empty`] has no line (the format cannot say it).
    pub fn write(&self, mut writer: impl Write) -> Result<(), Error> {
        for query in self.by_query.keys() {
            for (i, doc) in self.ranked(query).iter().enumerate() {
                writeln!(writer, "{query} Q0 {} {} {} {}", doc.docno, i + 1, doc.score, self.tag)?;
            }
        }
        writer.flush()?;
        Ok(())
    }

    /// Write the run to `path` (created or truncated).
    pub fn write_file(&self, path: &Path) -> Result<(), Error> {
        let file = std::fs::File::create(path).map_err(|e| Error::from(e).in_file(path))?;
        self.write(std::io::BufWriter::new(file)).map_err(|e| e.in_file(path))
    }
}

/// trec_eval's comparison (`comp_sim_docno` in form_res_rels.c): higher score first, the score
/// taken at `float` precision; on a tie the greater docno (byte order) first.
pub fn trec_eval_order(a: &ScoredDoc<'_>, b: &ScoredDoc<'_>) -> std::cmp::Ordering {
    let (sa, sb) = (a.score as f32, b.score as f32);
    sb.total_cmp(&sa).then_with(|| b.docno.cmp(a.docno))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docnos(run: &Run, query: &str) -> Vec<String> {
        run.ranked(query).iter().map(|d| d.docno.to_owned()).collect()
    }

    #[test]
    fn ranks_by_score_then_docno_descending_ignoring_the_rank_column() {
        // The rank column says d1, d2, d3, d4; the scores say d4 (3.0) first, then the tie at 2.0
        // between d2 and d10: "d2" > "d10" in byte order, so d2 comes first; d1 (1.0) last.
        let text = "q1 Q0 d1 1 1.0 sys\nq1 Q0 d10 2 2.0 sys\nq1 Q0 d2 3 2.0 sys\nq1 Q0 d4 4 3.0 sys\n";
        let run = Run::read(text.as_bytes()).expect("parse");
        assert_eq!(run.tag(), "sys");
        assert_eq!(docnos(&run, "q1"), ["d4", "d2", "d10", "d1"]);
    }

    #[test]
    fn scores_equal_at_float_precision_are_ties_as_in_trec_eval() {
        // 1.0 and 1.0 + 1e-12 differ as f64 but are the same f32: a tie, broken by docno ("b" > "a").
        let mut run = Run::new("t").expect("tag");
        run.push("q", "a", 1.0 + 1e-12).expect("push");
        run.push("q", "b", 1.0).expect("push");
        assert_eq!(docnos(&run, "q"), ["b", "a"]);
    }

    #[test]
    fn write_then_read_gives_the_same_run() {
        let mut run = Run::new("bm25").expect("tag");
        run.push("2", "d9", 0.1 + 0.2).expect("push");
        run.push("2", "d8", 1e-9).expect("push");
        run.push("10", "x", 12345.678).expect("push");
        run.push_ranking("3", ["c", "a", "b"]).expect("push");
        let mut out = Vec::new();
        run.write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("10 Q0 x 1 12345.678 bm25\n"), "{text}");
        assert_eq!(Run::read(text.as_bytes()).expect("read back"), run);
        assert_eq!(docnos(&run, "3"), ["c", "a", "b"]);
    }

    #[test]
    fn duplicate_documents_are_refused() {
        let err = Run::read("q Q0 d 1 2.0 t\nq Q0 e 2 1.0 t\nq Q0 d 3 0.5 t\n".as_bytes()).expect_err("duplicate");
        assert!(matches!(&err, Error::Parse { line: 3, message } if message.contains("listed twice")), "{err}");
        let mut run = Run::new("t").expect("tag");
        run.push("q", "d", 1.0).expect("first");
        assert!(matches!(run.push("q", "d", 2.0), Err(Error::DuplicateDocument { .. })));
        // The same document for another query is fine.
        run.push("r", "d", 1.0).expect("other query");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let cases: &[(&str, u64, &str)] = &[
            ("q Q0 d 1 2.0\n", 1, "expected 6 fields"),
            ("q Q0 d 1 2.0 t\nq Q0 e one 1.0 t\n", 2, "rank"),
            ("q Q0 d 1 high t\n", 1, "not a number"),
            ("q Q0 d 1 NaN t\n", 1, "non-finite"),
            ("q Q0 d 1 inf t\n", 1, "non-finite"),
        ];
        for (text, line, needle) in cases {
            match Run::read(text.as_bytes()) {
                Err(Error::Parse { line: got, message }) => {
                    assert_eq!(got, *line, "{text:?}: {message}");
                    assert!(message.contains(needle), "{text:?}: {message}");
                }
                other => panic!("{text:?}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn ids_that_cannot_be_written_are_refused() {
        let mut run = Run::new("t").expect("tag");
        assert!(matches!(run.push("q 1", "d", 1.0), Err(Error::InvalidId { .. })));
        assert!(matches!(run.push("q", "", 1.0), Err(Error::InvalidId { .. })));
        assert!(matches!(Run::new("my run"), Err(Error::InvalidId { .. })));
    }

    #[test]
    fn an_empty_file_is_an_empty_run() {
        let run = Run::read("\n\n".as_bytes()).expect("parse");
        assert!(run.is_empty());
        assert_eq!(run.queries().count(), 0);
    }
}
