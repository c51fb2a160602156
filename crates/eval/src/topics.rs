//! TREC topics: `<top><num>1</num><title> text </title></top>` as in vaswani, and the usual TREC
//! variants (`<num> Number: 301`, unclosed field tags, `<desc> Description:`, `<narr> Narrative:`,
//! other fields such as `<dom>` or `<smry>` skipped). Read as a stream, one topic held at a time.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use crate::lines::Lines;
use crate::{Error, check_id};

/// The largest topic (from `<top>` to `</top>`) accepted; real topics are a few kilobytes, so a
/// larger one means a missing `</top>`.
pub const MAX_TOPIC_BYTES: usize = 1024 * 1024;

/// One topic (query) of a test collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    /// The topic number as written (`1`, `301`): the query id the qrels and runs use.
    pub id: String,
    /// The title with whitespace collapsed; empty only when the topic has a description instead.
    pub title: String,
    /// The description (`<desc>`), prefix `Description:` removed, whitespace collapsed.
    pub description: Option<String>,
    /// The narrative (`<narr>`), prefix `Narrative:` removed, whitespace collapsed.
    pub narrative: Option<String>,
}

impl Topic {
    /// The text to search with: the title, or the description for a topic without a title.
    pub fn query_text(&self) -> &str {
        match (&self.title, &self.description) {
            (title, Some(description)) if title.is_empty() => description,
            (title, _) => title,
        }
    }
}

/// Read every topic of a topics file.
pub fn read_topics_file(path: &Path) -> Result<Vec<Topic>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::from(e).in_file(path))?;
    read_topics(std::io::BufReader::new(file)).map_err(|e| e.in_file(path))
}

/// Read every topic from `reader`. Text outside `<top>...</top>` other than whitespace, a
/// `<top>` inside a topic, an unclosed topic, a topic without a number, a repeated number or a
/// topic with neither title nor description is an error naming the line.
pub fn read_topics(reader: impl BufRead) -> Result<Vec<Topic>, Error> {
    let mut lines = Lines::new(reader);
    let mut topics = Vec::new();
    let mut seen = HashSet::new();
    // The topic being read: the line its `<top>` is on and its text so far.
    let mut open: Option<(u64, String)> = None;
    while let Some((line_no, line)) = lines.next_line()? {
        // ASCII lowercasing keeps byte offsets, so positions found in `lower` index `line`.
        let lower = line.to_ascii_lowercase();
        let mut pos = 0;
        loop {
            let rest = &lower[pos..];
            match open.take() {
                None => {
                    let Some(start) = rest.find("<top>") else {
                        if !rest.trim().is_empty() {
                            return Err(parse(line_no, "text outside <top>...</top>: is this a TREC topics file?"));
                        }
                        break;
                    };
                    if !rest[..start].trim().is_empty() {
                        return Err(parse(line_no, "text outside <top>...</top>: is this a TREC topics file?"));
                    }
                    open = Some((line_no, String::new()));
                    pos += start + "<top>".len();
                }
                Some((start_line, mut text)) => {
                    let close = rest.find("</top>");
                    if let Some(nested) = rest.find("<top>")
                        && close.is_none_or(|close| nested < close)
                    {
                        return Err(parse(
                            line_no,
                            format!("<top> inside the topic opened on line {start_line}: is a </top> missing?"),
                        ));
                    }
                    match close {
                        Some(close) => {
                            text.push_str(&line[pos..pos + close]);
                            let topic = parse_topic(start_line, &text)?;
                            if !seen.insert(topic.id.clone()) {
                                return Err(parse(start_line, format!("topic {} appears twice", topic.id)));
                            }
                            topics.push(topic);
                            pos += close + "</top>".len();
                        }
                        None => {
                            text.push_str(&line[pos..]);
                            text.push('\n');
                            if text.len() > MAX_TOPIC_BYTES {
                                return Err(parse(
                                    start_line,
                                    format!("topic longer than {MAX_TOPIC_BYTES} bytes: is a </top> missing?"),
                                ));
                            }
                            open = Some((start_line, text));
                            break;
                        }
                    }
                }
            }
        }
    }
    if let Some((start_line, _)) = open {
        return Err(parse(start_line, "<top> is never closed: the file ends inside this topic"));
    }
    Ok(topics)
}

fn parse(line: u64, message: impl Into<String>) -> Error {
    Error::Parse { line, message: message.into() }
}

/// The fields of one topic's text (between `<top>` and `</top>`). A field runs from its opening
/// tag to the next tag of any kind, so closing tags are optional (old TREC topics omit them).
fn parse_topic(start_line: u64, text: &str) -> Result<Topic, Error> {
    // (field name, content) in order; a field runs to the next tag.
    let mut fields: Vec<(String, &str)> = Vec::new();
    let mut field: Option<String> = None;
    let mut content_start = 0;
    let mut pos = 0;
    while let Some(offset) = text[pos..].find('<') {
        let at = pos + offset;
        let Some(tag_len) = tag_len(&text[at..]) else {
            pos = at + 1;
            continue;
        };
        if let Some(name) = field.take() {
            fields.push((name, &text[content_start..at]));
        }
        let tag = &text[at + 1..at + tag_len - 1];
        if !tag.starts_with('/') {
            field = Some(tag.to_ascii_lowercase());
        }
        pos = at + tag_len;
        content_start = pos;
    }
    if let Some(name) = field {
        fields.push((name, &text[content_start..]));
    }

    let (mut num, mut title, mut description, mut narrative) = (None, None, None, None);
    for (name, content) in fields {
        let slot = match name.as_str() {
            "num" => &mut num,
            "title" => &mut title,
            "desc" => &mut description,
            "narr" => &mut narrative,
            _ => continue,
        };
        if slot.replace(content).is_some() {
            return Err(parse(start_line, format!("topic has two <{name}> fields")));
        }
    }

    let Some(num) = num else {
        return Err(parse(start_line, "topic has no <num>"));
    };
    let id = strip_prefix_ci(num.trim(), "number:").trim().to_owned();
    check_id("topic number", &id)
        .map_err(|_| parse(start_line, format!("topic number {id:?} is empty or has spaces")))?;
    let title = collapse(strip_prefix_ci(title.unwrap_or("").trim(), "topic:"));
    let description =
        description.map(|d| collapse(strip_prefix_ci(d.trim(), "description:"))).filter(|d| !d.is_empty());
    let narrative = narrative.map(|n| collapse(strip_prefix_ci(n.trim(), "narrative:"))).filter(|n| !n.is_empty());
    if title.is_empty() && description.is_none() {
        return Err(parse(start_line, format!("topic {id} has neither a <title> nor a <desc>")));
    }
    Ok(Topic { id, title, description, narrative })
}

/// The byte length of the tag `<name>` or `</name>` (ASCII letters only) at the start of `s`, or
/// `None` when `s` does not start with a tag (a literal `<` in the text).
fn tag_len(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 1;
    if bytes.get(i) == Some(&b'/') {
        i += 1;
    }
    let name_start = i;
    while bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
        i += 1;
    }
    (i > name_start && bytes.get(i) == Some(&b'>')).then_some(i + 1)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> &'a str {
    match s.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => &s[prefix.len()..],
        _ => s,
    }
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<Topic>, Error> {
        read_topics(text.as_bytes())
    }

    #[test]
    fn vaswani_style_topics() {
        let topics = read("<top>\n<num>1</num><title>\nMEASUREMENT OF  DIELECTRIC\nCONSTANT\n</title>\n</top>\n<top><num>2</num><title>waveguides</title></top>\n").expect("parse");
        assert_eq!(topics.len(), 2);
        assert_eq!(topics[0].id, "1");
        assert_eq!(topics[0].title, "MEASUREMENT OF DIELECTRIC CONSTANT");
        assert_eq!(topics[0].description, None);
        assert_eq!(topics[1].id, "2");
        assert_eq!(topics[1].query_text(), "waveguides");
    }

    #[test]
    fn classic_trec_topics_with_unclosed_fields_and_prefixes() {
        let text = "<top>\n\n<num> Number: 301\n<title> International Organized Crime\n\n<desc> Description:\nIdentify organizations\nthat participate.\n\n<narr> Narrative:\nA relevant document must <b>name</b> one.\n</top>\n\n<TOP>\n<NUM> Number: 302 </NUM>\n<DOM> Domain: x\n<TITLE> Topic: Poliomyelitis\n</TOP>\n";
        let topics = read(text).expect("parse");
        assert_eq!(topics.len(), 2);
        assert_eq!(topics[0].id, "301");
        assert_eq!(topics[0].title, "International Organized Crime");
        assert_eq!(topics[0].description.as_deref(), Some("Identify organizations that participate."));
        // `<b>` is a tag too: the narrative ends there (unknown fields are skipped).
        assert_eq!(topics[0].narrative.as_deref(), Some("A relevant document must"));
        assert_eq!(topics[1].id, "302");
        assert_eq!(topics[1].title, "Poliomyelitis");
    }

    #[test]
    fn a_literal_less_than_sign_stays_text() {
        let topics = read("<top><num>7</num><title>a < b and c<2</title></top>").expect("parse");
        assert_eq!(topics[0].title, "a < b and c<2");
    }

    #[test]
    fn description_only_topic_searches_with_its_description() {
        let topics = read("<top><num>9</num><desc>Description: find this</desc></top>").expect("parse");
        assert_eq!(topics[0].title, "");
        assert_eq!(topics[0].query_text(), "find this");
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, u64, &str)] = &[
            ("<top><num>1</num><title>a</title></top>\n\n<top>\n<title>b</title>\n</top>", 3, "no <num>"),
            ("<top><num>1</num><title>a</title>\n<top><num>2</num>", 2, "inside the topic opened on line 1"),
            ("\n<top><num>1</num><title>a</title>", 2, "never closed"),
            ("hello\n", 1, "outside"),
            ("<top><num>1</num><title>a</title></top>\n<top><num>1</num><title>b</title></top>", 2, "twice"),
            ("<top><num>1 2</num><title>a</title></top>", 1, "has spaces"),
            ("<top><num>3</num><narr>n</narr></top>", 1, "neither"),
            ("<top><num>3</num><title>a</title><title>b</title></top>", 1, "two <title>"),
        ];
        for (text, line, needle) in cases {
            match read(text) {
                Err(Error::Parse { line: got, message }) => {
                    assert_eq!(got, *line, "{text:?}: {message}");
                    assert!(message.contains(needle), "{text:?}: {message}");
                }
                other => panic!("{text:?}: expected a parse error, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_overlong_line_is_refused_without_reading_it_all() {
        let text = format!("<top><num>1</num><title>{}</title></top>", "x".repeat(crate::lines::MAX_LINE_BYTES + 10));
        assert!(matches!(read(&text), Err(Error::Parse { line: 1, .. })));
    }
}
