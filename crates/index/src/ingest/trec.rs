//! TREC parser: `<DOC>` blocks with a `<DOCNO>`, optional `<TITLE>`/`<HEADLINE>` and `<TEXT>`.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{IngestError, normalize_whitespace};
use crate::Document;

/// Parses TREC text into documents of `collection`.
///
/// Each `<DOC>...</DOC>` block needs a `<DOCNO>`, which becomes the id. The body is the content
/// of the `<TEXT>` elements when present, else everything in the block except `<DOCNO>` and the
/// title element; remaining markup tags are dropped and whitespace collapsed to single spaces.
/// The title is `<TITLE>` (or `<HEADLINE>`) when present, else empty (a hit shows the body's
/// first words: [`crate::display_title`]; a title made of them would distort ranking).
/// Tag names are matched case-insensitively; text outside `<DOC>` blocks is ignored.
pub fn parse_trec(text: &str, collection: &str) -> Result<Vec<Document>, IngestError> {
    let mut lines = LineCounter::default();
    let mut docs = Vec::new();
    let mut pos = 0;
    while let Some(start) = find_tag(text, pos, "<DOC>") {
        let line = lines.line_at(text, start);
        let content_start = start + "<DOC>".len();
        let Some(end) = find_tag(text, content_start, "</DOC>") else {
            return Err(trec_error(line, "<DOC> is never closed: add </DOC> at the end of the document"));
        };
        let block = &text[content_start..end];
        if let Some(nested) = find_tag(block, 0, "<DOC>") {
            let nested_line = lines.line_at(text, content_start + nested);
            return Err(trec_error(
                nested_line,
                "<DOC> starts inside another document: close the previous one with </DOC>",
            ));
        }
        docs.push(parse_block(block, line, collection)?);
        pos = end + "</DOC>".len();
    }
    if docs.is_empty() && !text.trim().is_empty() {
        return Err(trec_error(1, "no <DOC> blocks found: is this really a TREC file?"));
    }
    Ok(docs)
}

fn parse_block(block: &str, line: usize, collection: &str) -> Result<Document, IngestError> {
    let Some(docno) = element(block, "DOCNO", line)? else {
        return Err(trec_error(line, "document has no <DOCNO>: add <DOCNO>id</DOCNO> inside <DOC>"));
    };
    let id = block[docno.inner.clone()].trim().to_owned();
    if id.is_empty() {
        return Err(trec_error(line, "document has an empty <DOCNO>: put its id between the tags"));
    }

    let mut title_element = element(block, "TITLE", line)?;
    if title_element.is_none() {
        title_element = element(block, "HEADLINE", line)?;
    }

    let mut text_parts = Vec::new();
    let mut search_from = 0;
    while let Some(part) = element(&block[search_from..], "TEXT", line)? {
        text_parts.push(strip_tags(&block[search_from..][part.inner.clone()]));
        search_from += part.outer.end;
    }
    let raw_body = if text_parts.is_empty() {
        let mut removed = vec![docno.outer.clone()];
        if let Some(title) = &title_element {
            removed.push(title.outer.clone());
        }
        strip_tags(&without_ranges(block, removed))
    } else {
        text_parts.join(" ")
    };
    let body = normalize_whitespace(&raw_body);
    let title = match &title_element {
        Some(title) => normalize_whitespace(&strip_tags(&block[title.inner.clone()])),
        None => String::new(),
    };
    Ok(Document {
        id,
        collection: collection.to_owned(),
        title,
        body,
        metadata: BTreeMap::new(),
        acl: crate::Acl::default(),
    })
}

fn trec_error(line: usize, reason: &str) -> IngestError {
    IngestError::Trec { line, reason: reason.to_owned() }
}

/// Byte ranges of one `<NAME>...</NAME>` element: all of it, and its content.
#[derive(Debug)]
struct Element {
    outer: Range<usize>,
    inner: Range<usize>,
}

/// Finds the first `<NAME>...</NAME>` in `block`; an unclosed one is an error.
fn element(block: &str, name: &str, line: usize) -> Result<Option<Element>, IngestError> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let Some(start) = find_tag(block, 0, &open) else {
        return Ok(None);
    };
    let inner_start = start + open.len();
    let Some(inner_end) = find_tag(block, inner_start, &close) else {
        return Err(IngestError::Trec {
            line,
            reason: format!("{open} is never closed in this document: add {close}"),
        });
    };
    Ok(Some(Element { outer: start..inner_end + close.len(), inner: inner_start..inner_end }))
}

/// Byte offset of the first ASCII-case-insensitive occurrence of `tag` in `text[from..]`.
fn find_tag(text: &str, from: usize, tag: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let tag = tag.as_bytes();
    let mut pos = from;
    while let Some(offset) = bytes.get(pos..)?.iter().position(|&b| b == b'<') {
        let at = pos + offset;
        let candidate = bytes.get(at..at + tag.len())?;
        if candidate.eq_ignore_ascii_case(tag) {
            return Some(at);
        }
        pos = at + 1;
    }
    None
}

/// `text` without the given (non-overlapping) byte ranges, with a space where each was.
fn without_ranges(text: &str, mut ranges: Vec<Range<usize>>) -> String {
    ranges.sort_by_key(|range| range.start);
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for range in ranges {
        if range.start >= pos {
            out.push_str(&text[pos..range.start]);
            out.push(' ');
            pos = range.end;
        }
    }
    out.push_str(&text[pos..]);
    out
}

/// Replaces markup tags such as `<P>`, `</P>` or `<F P=105>` by spaces, keeping their content.
/// A `<` that does not start a tag (as in `a < b`) is kept.
fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let after = &rest[open..];
        match tag_len(after) {
            Some(len) => {
                out.push(' ');
                rest = &after[len..];
            }
            None => {
                out.push('<');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Length of the tag at the start of `text` (which starts with `<`), if it is one.
fn tag_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    if bytes.get(i) == Some(&b'/') {
        i += 1;
    }
    if !bytes.get(i)?.is_ascii_alphabetic() {
        return None;
    }
    while bytes.get(i).is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')) {
        i += 1;
    }
    match bytes.get(i)? {
        b'>' => Some(i + 1),
        b' ' => {
            // Attributes: up to the next `>` on the same line, with no other `<` in between.
            let close = bytes[i..].iter().position(|&b| matches!(b, b'>' | b'<' | b'\n'))?;
            (bytes[i + close] == b'>').then_some(i + close + 1)
        }
        _ => None,
    }
}

/// Turns byte offsets into 1-based line numbers, scanning each byte of the text at most once
/// as long as offsets are asked for in increasing order.
#[derive(Debug, Default)]
struct LineCounter {
    offset: usize,
    line: usize,
}

impl LineCounter {
    fn line_at(&mut self, text: &str, offset: usize) -> usize {
        if offset < self.offset {
            self.offset = 0;
            self.line = 0;
        }
        let newlines = text.as_bytes()[self.offset..offset].iter().filter(|&&b| b == b'\n').count();
        self.line += newlines;
        self.offset = offset;
        self.line + 1
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;

    const SAMPLE: &str = "<DOC>
<DOCNO>1</DOCNO>
compact memories have flexible capacities  a digital data storage
system with capacity up to bits and random and or sequential access
is described
</DOC>
<DOC>
<DOCNO>2</DOCNO>
an electronic analogue computer
</DOC>
";

    #[test]
    fn parses_plain_trec_sample() {
        let docs = parse_trec(SAMPLE, "vaswani").expect("valid sample");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "1");
        assert_eq!(docs[0].collection, "vaswani");
        assert_eq!(
            docs[0].body,
            "compact memories have flexible capacities a digital data storage system with capacity up to bits and random and or sequential access is described"
        );
        assert_eq!(docs[0].title, "", "no title element: none is made up");
        assert_eq!(docs[1].title, "");
    }

    #[test]
    fn uses_title_headline_and_text_tags() {
        let text = "<doc>\n<DOCNO> FT-1 </DOCNO>\n<DATE>1991</DATE>\n<HEADLINE>Big <B>news</B></HEADLINE>\n<TEXT>\n<P>first para</P>\n</TEXT>\n<TEXT>second &amp; a < b</TEXT>\n</doc>\n<DOC><DOCNO>2</DOCNO><TITLE>T</TITLE> body  here </DOC>";
        let docs = parse_trec(text, "c").expect("valid");
        assert_eq!(docs[0].id, "FT-1");
        assert_eq!(docs[0].title, "Big news");
        assert_eq!(docs[0].body, "first para second &amp; a < b");
        assert_eq!(docs[1].title, "T");
        assert_eq!(docs[1].body, "body here");
    }

    #[test]
    fn missing_docno_names_the_line() {
        let text = "<DOC>\n<DOCNO>1</DOCNO>\nok\n</DOC>\n\n<DOC>\nno number\n</DOC>\n";
        let err = parse_trec(text, "c").expect_err("second doc has no DOCNO");
        assert!(matches!(err, IngestError::Trec { line: 6, .. }), "{err:?}");
        assert!(err.to_string().starts_with("line 6: document has no <DOCNO>"), "{err}");
    }

    #[test]
    fn structural_errors() {
        let unclosed = parse_trec("<DOC><DOCNO>1</DOCNO>x\n", "c").expect_err("unclosed");
        assert!(unclosed.to_string().contains("never closed"), "{unclosed}");
        let nested = parse_trec("<DOC><DOCNO>1</DOCNO>\n<DOC><DOCNO>2</DOCNO></DOC>", "c").expect_err("nested");
        assert!(matches!(nested, IngestError::Trec { line: 2, .. }), "{nested:?}");
        let empty_no = parse_trec("<DOC><DOCNO> </DOCNO>x</DOC>", "c").expect_err("empty");
        assert!(empty_no.to_string().contains("empty <DOCNO>"), "{empty_no}");
        assert!(parse_trec("just some prose", "c").is_err());
        assert_eq!(parse_trec(" \n", "c").expect("blank is empty").len(), 0);
    }

    #[test]
    fn strip_tags_keeps_non_tags() {
        assert_eq!(strip_tags("a<P>b</P>c<F P=1>d"), "a b c d");
        assert_eq!(strip_tags("x < y <3 <>"), "x < y <3 <>");
    }

    #[test]
    fn vaswani_collection_if_present() {
        let Some(text) = crate::test_data::vaswani_file("doc-text.trec") else {
            return;
        };
        let started = Instant::now();
        let docs = parse_trec(&text, "vaswani").expect("vaswani parses");
        let elapsed = started.elapsed();
        assert_eq!(docs.len(), 11_429);
        assert_eq!(docs[0].id, "1");
        assert!(docs.iter().all(|d| !d.id.is_empty() && !d.body.contains("  ")));
        println!("parsed {} vaswani docs in {elapsed:?}", docs.len());
    }

    fn word() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9][a-zA-Z0-9&;.,'-]{0,9}"
    }

    fn words(max: usize) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(word(), 0..max)
    }

    #[test]
    fn regression_deeply_nested_and_repeated_tags_parse_linearly() {
        // The TREC reader is a flat scanner (no recursion): nested or repeated tags are text.
        // Pin that on a blocking thread's stack and within a time bound that a quadratic
        // rescan of 100k tags would blow.
        let n = 100_000;
        let inputs = [
            format!("<DOC><DOCNO>1</DOCNO>{}x{}</DOC>", "<TEXT>".repeat(n), "</TEXT>".repeat(n)),
            format!("<DOC><DOCNO>1</DOCNO>{}x</DOC>", "<P>".repeat(n)),
            format!("<DOC><DOCNO>1</DOCNO>{}</DOC>", "<TEXT>a</TEXT>".repeat(n)),
            format!("<DOC><DOCNO>1</DOCNO>{}</DOC>", "<F P=1 ".repeat(n)),
            "<DOC>".repeat(n),
            "<DOC><DOCNO>1</DOCNO>x</DOC>".repeat(n),
            format!("<DOC><DOCNO>1</DOCNO><TITLE>{}</TITLE></DOC>", "<".repeat(n)),
        ];
        for text in inputs {
            let started = Instant::now();
            let outcome = std::thread::Builder::new()
                .stack_size(2 * 1024 * 1024)
                .spawn(move || parse_trec(&text, "c").map(|docs| docs.len()))
                .expect("spawn")
                .join()
                .expect("parser thread panicked");
            assert!(started.elapsed().as_secs() < 20, "slow: {:?} ({outcome:?})", started.elapsed());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn render_then_parse_round_trips(
            docs in proptest::collection::vec(
                ("[A-Za-z0-9_.-]{1,12}", proptest::option::of(words(6)), words(40)),
                0..8,
            )
        ) {
            let mut text = String::new();
            for (id, title, body) in &docs {
                text.push_str(&format!("<DOC>\n<DOCNO>{id}</DOCNO>\n"));
                if let Some(title) = title {
                    text.push_str(&format!("<TITLE>{}</TITLE>\n", title.join(" ")));
                }
                // Wrap the body over several lines with ragged spacing.
                for chunk in body.chunks(5) {
                    text.push_str(&chunk.join("   "));
                    text.push('\n');
                }
                text.push_str("</DOC>\n");
            }
            let parsed = parse_trec(&text, "c").expect("rendered TREC parses");
            prop_assert_eq!(parsed.len(), docs.len());
            for (doc, (id, title, body)) in parsed.iter().zip(&docs) {
                prop_assert_eq!(&doc.id, id);
                prop_assert_eq!(&doc.body, &body.join(" "));
                let expected_title = title.as_ref().map(|title| title.join(" ")).unwrap_or_default();
                prop_assert_eq!(&doc.title, &expected_title);
            }
        }

        #[test]
        fn never_panics_on_arbitrary_input(text in "(<DOC>|</DOC>|<DOCNO>|</DOCNO>|<TEXT>|<|>|[a-z ]|\n){0,60}") {
            let _ = parse_trec(&text, "c");
        }
    }
}
