//! Plain-text and markdown files: one file, one document.

use std::collections::BTreeMap;

use crate::Document;

/// Longest derived title, in characters; a text file's first line can be arbitrarily long.
const MAX_TITLE_CHARS: usize = 200;

/// Makes a document of a whole text file.
///
/// The id is `path_relative` with `/` separators, the title the first markdown heading
/// (`# ...`, outside code fences) or else the first non-empty line, and the body the full text.
pub fn document_from_text_file(path_relative: &str, text: &str, collection: &str) -> Document {
    let id = if std::path::MAIN_SEPARATOR == '/' {
        path_relative.to_owned()
    } else {
        path_relative.replace(std::path::MAIN_SEPARATOR, "/")
    };
    let title =
        first_heading(text).or_else(|| text.lines().map(str::trim).find(|line| !line.is_empty())).unwrap_or_default();
    Document {
        id,
        collection: collection.to_owned(),
        title: shorten(title, MAX_TITLE_CHARS),
        body: text.to_owned(),
        metadata: BTreeMap::new(),
        acl: crate::Acl::default(),
    }
}

/// The text of the first ATX heading (`#` to `######` then a space) outside fenced code.
fn first_heading(text: &str) -> Option<&str> {
    let mut in_fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = trimmed.bytes().take_while(|&b| b == b'#').count();
        if !(1..=6).contains(&hashes) {
            continue;
        }
        let rest = &trimmed[hashes..];
        if !rest.is_empty() && !rest.starts_with([' ', '\t']) {
            continue;
        }
        // Closing hashes (`## Title ##`) are decoration.
        let heading = rest.trim().trim_end_matches('#').trim_end();
        if !heading.is_empty() {
            return Some(heading);
        }
    }
    None
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_from_heading_or_first_line() {
        let doc = document_from_text_file("docs/a.md", "intro line\n\n## Setup ##\ntext", "c");
        assert_eq!(doc.id, "docs/a.md");
        assert_eq!(doc.title, "Setup");
        assert_eq!(doc.body, "intro line\n\n## Setup ##\ntext");
        assert_eq!(doc.collection, "c");

        let plain = document_from_text_file("a.txt", "\n\n   first real line  \nsecond", "c");
        assert_eq!(plain.title, "first real line");

        let empty = document_from_text_file("e.txt", "", "c");
        assert_eq!(empty.title, "");
    }

    #[test]
    fn ignores_hashtags_and_fenced_comments() {
        let text = "```sh\n# not a title\n```\n#hashtag\nReal first line\n# Real Heading\n";
        assert_eq!(document_from_text_file("x.md", text, "c").title, "Real Heading");
    }

    #[test]
    fn long_first_line_is_shortened() {
        let text = "é".repeat(500);
        let doc = document_from_text_file("x.txt", &text, "c");
        assert_eq!(doc.title.chars().count(), MAX_TITLE_CHARS);
    }
}
