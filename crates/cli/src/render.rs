//! Plain-text rendering shared by the subcommands: aligned tables with truncation, safe display
//! of text that came over the wire, snippets with their `<b>` highlights, and ages.
//!
//! Everything here is a pure function of its input, so the exact output is unit-tested. Widths
//! count characters (not terminal cells): right for the ASCII and Latin text of typical corpora,
//! a little off for wide CJK characters.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime};

/// Starts bold text on an ANSI terminal.
const BOLD: &str = "\x1b[1m";
/// Ends every ANSI attribute.
const RESET: &str = "\x1b[0m";
/// Marks text cut short.
const ELLIPSIS: char = '…';
/// Space between table columns.
const GUTTER: &str = "  ";
/// Columns with a maximum width are not shrunk below this to fit a narrow terminal.
pub const MIN_SHRUNK_WIDTH: usize = 12;

/// Whether to decorate stdout with ANSI bold: only on a terminal, and never with `NO_COLOR` set.
pub fn stdout_supports_ansi() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text columns.
    Left,
    /// Numbers.
    Right,
}

/// One column of a [`Table`].
#[derive(Debug, Clone)]
pub struct Column {
    header: String,
    align: Align,
    max_width: Option<usize>,
}

impl Column {
    /// A left-aligned column without a width limit.
    pub fn left(header: &str) -> Self {
        Column { header: header.to_owned(), align: Align::Left, max_width: None }
    }

    /// A right-aligned column without a width limit.
    pub fn right(header: &str) -> Self {
        Column { align: Align::Right, ..Column::left(header) }
    }

    /// Cuts longer cells to `width` characters, ending them with `…`.
    pub fn max_width(mut self, width: usize) -> Self {
        self.max_width = Some(width.max(1));
        self
    }
}

/// A table printed with a header row, columns separated by two spaces and no trailing spaces.
#[derive(Debug, Clone)]
pub struct Table {
    columns: Vec<Column>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: Vec<Column>) -> Self {
        Table { columns, rows: Vec::new() }
    }

    /// Appends a row; missing cells are empty and extra cells are ignored. Cells may hold ANSI
    /// SGR sequences, which take no width.
    pub fn push(&mut self, cells: Vec<String>) {
        let mut row = cells;
        row.resize(self.columns.len(), String::new());
        self.rows.push(row);
    }

    /// Number of rows, not counting the header.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Drops the last column.
    pub fn drop_last_column(&mut self) {
        self.columns.pop();
        for row in &mut self.rows {
            row.truncate(self.columns.len());
        }
    }

    /// Drops the columns in which every cell is empty (the header alone does not keep one).
    pub fn drop_empty_columns(&mut self) {
        let keep: Vec<bool> = (0..self.columns.len()).map(|i| self.rows.iter().any(|row| !row[i].is_empty())).collect();
        let mut index = 0;
        self.columns.retain(|_| {
            index += 1;
            keep[index - 1]
        });
        for row in &mut self.rows {
            let mut index = 0;
            row.retain(|_| {
                index += 1;
                keep[index - 1]
            });
        }
    }

    /// The table as text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        self.render_with(self.columns.iter().map(|c| c.max_width).collect())
    }

    /// [`Table::render`] fitted into `width` characters: the last column gets the room left,
    /// at least `min_last`; when that is not enough, columns with a maximum width give up
    /// characters first (widest first, down to [`MIN_SHRUNK_WIDTH`]). A table that still does
    /// not fit overflows rather than losing its last column.
    pub fn render_within(&self, width: usize, min_last: usize) -> String {
        self.render_with(self.fit(width, min_last))
    }

    /// The characters the last column gets in [`Table::render_within`].
    pub fn last_column_room(&self, width: usize, min_last: usize) -> usize {
        self.fit(width, min_last).last().copied().flatten().unwrap_or(width)
    }

    /// Replaces one cell (row and column counted from 0, header excluded); out of range is a
    /// no-op.
    pub fn set_cell(&mut self, row: usize, column: usize, value: String) {
        if let Some(cell) = self.rows.get_mut(row).and_then(|r| r.get_mut(column)) {
            *cell = value;
        }
    }

    /// Per-column limits that fit `width`, see [`Table::render_within`].
    fn fit(&self, width: usize, min_last: usize) -> Vec<Option<usize>> {
        let mut limits: Vec<Option<usize>> = self.columns.iter().map(|c| c.max_width).collect();
        let Some(last) = limits.len().checked_sub(1) else {
            return limits;
        };
        loop {
            let widths: Vec<usize> = (0..last).map(|i| self.column_width(i, limits[i])).collect();
            let used: usize = widths.iter().map(|w| w + GUTTER.len()).sum();
            if used + min_last >= width {
                // Shrink the widest column that may be cut, if any is still above the floor.
                let shrinkable = (0..last)
                    .filter(|&i| self.columns[i].max_width.is_some() && widths[i] > MIN_SHRUNK_WIDTH)
                    .max_by_key(|&i| widths[i]);
                if let Some(i) = shrinkable
                    && used + min_last > width
                {
                    limits[i] = Some(widths[i] - 1);
                    continue;
                }
            }
            let room = width.saturating_sub(used).max(min_last);
            limits[last] = Some(limits[last].map_or(room, |max| max.min(room)));
            return limits;
        }
    }

    /// Width of column `i` once its cells are cut to `limit`.
    fn column_width(&self, i: usize, limit: Option<usize>) -> usize {
        self.rows
            .iter()
            .map(|row| match limit {
                Some(max) => visible_width(&row[i]).min(max),
                None => visible_width(&row[i]),
            })
            .chain(std::iter::once(visible_width(&self.columns[i].header)))
            .max()
            .unwrap_or(0)
    }

    fn render_with(&self, limits: Vec<Option<usize>>) -> String {
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                row.iter()
                    .zip(&limits)
                    .map(|(cell, limit)| match limit {
                        Some(max) => truncate(cell, *max),
                        None => cell.clone(),
                    })
                    .collect()
            })
            .collect();
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, column)| {
                cells
                    .iter()
                    .map(|row| visible_width(&row[i]))
                    .chain(std::iter::once(visible_width(&column.header)))
                    .max()
                    .unwrap_or(0)
            })
            .collect();

        let mut out = String::new();
        let header: Vec<String> = self.columns.iter().map(|c| c.header.clone()).collect();
        for row in std::iter::once(&header).chain(&cells) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str(GUTTER);
                }
                let padding = " ".repeat(widths[i].saturating_sub(visible_width(cell)));
                match self.columns[i].align {
                    Align::Left => {
                        line.push_str(cell);
                        line.push_str(&padding);
                    }
                    Align::Right => {
                        line.push_str(&padding);
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Characters `text` takes on screen: ANSI escape sequences count zero.
pub fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            skip_escape(&mut chars);
        } else {
            width += 1;
        }
    }
    width
}

/// `text` without its ANSI escape sequences.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            skip_escape(&mut chars);
        } else {
            out.push(c);
        }
    }
    out
}

/// Consumes the rest of an escape sequence whose ESC was just read: `ESC [ params final` (CSI),
/// or ESC and one more character.
fn skip_escape(chars: &mut std::str::Chars<'_>) -> String {
    let mut sequence = String::from('\x1b');
    let Some(next) = chars.next() else {
        return sequence;
    };
    sequence.push(next);
    if next == '[' {
        for c in chars.by_ref() {
            sequence.push(c);
            if ('@'..='~').contains(&c) {
                break;
            }
        }
    }
    sequence
}

/// Cuts `text` to at most `max` visible characters, the last of them `…`. Escape sequences are
/// kept whole, and a reset is appended when the cut may have left an attribute on.
pub fn truncate(text: &str, max: usize) -> String {
    if visible_width(text) <= max {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut width = 0;
    let mut styled = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            out.push_str(&skip_escape(&mut chars));
            styled = true;
            continue;
        }
        if width + 1 >= max {
            break;
        }
        out.push(c);
        width += 1;
    }
    // A cut right after a word reads better without the trailing space before the ellipsis.
    let kept = out.trim_end_matches(' ').len();
    out.truncate(kept);
    out.push(ELLIPSIS);
    if styled {
        out.push_str(RESET);
    }
    out
}

/// Makes text from the network safe and single-line for a terminal: control characters
/// (including ESC, so a document cannot restyle or move the cursor) become spaces, and runs of
/// whitespace collapse to one space.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c);
    }
    out
}

/// Renders a snippet from the index (HTML-escaped text, matched terms in `<b>…</b>`) for a
/// terminal: entities decoded, text [`clean`]ed, highlights in ANSI bold when `ansi`, else plain.
pub fn snippet(html: &str, ansi: bool) -> String {
    render_segments(&snippet_segments(html), ansi)
}

/// [`snippet`] for a column of `room` characters: when the first highlight would be cut off,
/// leading text is dropped (marked with `…`) so the highlight shows with some context before it.
pub fn snippet_within(html: &str, ansi: bool, room: usize) -> String {
    let segments = snippet_segments(html);
    let total: usize = segments.iter().map(|(text, _)| text.chars().count()).sum();
    let mut offset = 0;
    let mut first_highlight = None;
    for (text, bold) in &segments {
        if *bold {
            first_highlight = Some((offset, text.chars().count()));
            break;
        }
        offset += text.chars().count();
    }
    let Some((start, len)) = first_highlight else {
        return render_segments(&segments, ansi);
    };
    // Visible as it is: the whole snippet fits, or the highlight ends before the cut (`…`).
    if total <= room || start + len < room.saturating_sub(1) {
        return render_segments(&segments, ansi);
    }
    let context = room / 4;
    let cut = drop_chars_to_word(&segments, start.saturating_sub(context));
    let mut focused = vec![(ELLIPSIS.to_string(), false)];
    focused.extend(cut);
    render_segments(&focused, ansi)
}

/// Snippet HTML as cleaned `(text, highlighted)` pieces, whitespace collapsed across pieces.
fn snippet_segments(html: &str) -> Vec<(String, bool)> {
    let mut segments: Vec<(String, bool)> = Vec::new();
    let mut rest = html;
    let mut bold = false;
    loop {
        let next_tag = if bold { "</b>" } else { "<b>" };
        let (text, after) = match rest.find(next_tag) {
            Some(at) => (&rest[..at], Some(&rest[at + next_tag.len()..])),
            None => (rest, None),
        };
        let mut text = decode_entities(text);
        // One space between pieces, none at the very start.
        let previous_ends_in_space = segments.last().is_none_or(|(t, _)| t.ends_with(' '));
        if previous_ends_in_space {
            text = text.trim_start().to_owned();
        }
        if !text.is_empty() {
            segments.push((text, bold));
        }
        match after {
            Some(after) => {
                rest = after;
                bold = !bold;
            }
            None => break,
        }
    }
    if let Some((last, _)) = segments.last_mut() {
        let kept = last.trim_end().len();
        last.truncate(kept);
    }
    segments.retain(|(text, _)| !text.is_empty());
    segments
}

fn render_segments(segments: &[(String, bool)], ansi: bool) -> String {
    let mut out = String::new();
    for (text, bold) in segments {
        if *bold && ansi {
            let _ = write!(out, "{BOLD}{text}{RESET}");
        } else {
            out.push_str(text);
        }
    }
    out
}

/// `segments` without their first `skip` characters, then up to the next word start.
fn drop_chars_to_word(segments: &[(String, bool)], skip: usize) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut to_skip = skip;
    let mut seeking_word = skip > 0;
    for (text, bold) in segments {
        let mut kept = String::new();
        for c in text.chars() {
            if to_skip > 0 {
                to_skip -= 1;
                continue;
            }
            if seeking_word {
                // Inside a highlight, stop at once: never cut the highlight itself.
                if c == ' ' || *bold {
                    seeking_word = false;
                    if c == ' ' {
                        continue;
                    }
                } else {
                    continue;
                }
            }
            kept.push(c);
        }
        if !kept.is_empty() {
            out.push((kept, *bold));
        }
    }
    out
}

/// Decodes the entities tantivy's snippet HTML uses and cleans the result.
fn decode_entities(text: &str) -> String {
    let decoded = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    // Keep the edges' whitespace as one space so "a <b>b</b>" stays two words.
    let lead = decoded.starts_with(char::is_whitespace);
    let trail = decoded.ends_with(char::is_whitespace) && !decoded.trim().is_empty();
    let mut out = String::new();
    if lead {
        out.push(' ');
    }
    out.push_str(&clean(&decoded));
    if trail {
        out.push(' ');
    }
    out
}

/// An age like `0.4s ago`, `12s ago`, `3m ago`, `5h ago` or `2d ago`.
pub fn age(elapsed: Duration) -> String {
    format!("{} ago", span(elapsed))
}

/// A duration in its largest whole unit: `0.4s`, `12s`, `3m`, `5h`, `2d`.
pub fn span(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 10.0 {
        format!("{secs:.1}s")
    } else if secs < 60.0 {
        format!("{}s", duration.as_secs())
    } else if secs < 3600.0 {
        format!("{}m", duration.as_secs() / 60)
    } else if secs < 86_400.0 {
        format!("{}h", duration.as_secs() / 3600)
    } else {
        format!("{}d", duration.as_secs() / 86_400)
    }
}

/// `time` relative to `now`: `in 15m` for the future, `3m ago` for the past.
pub fn relative(time: SystemTime, now: SystemTime) -> String {
    match time.duration_since(now) {
        Ok(ahead) => format!("in {}", span(ahead)),
        Err(behind) => age(behind.duration()),
    }
}

/// A wire timestamp as RFC 3339 with its distance from `now` (`2025-06-01T12:15:00Z (in 15m)`),
/// or `-` without one.
pub fn timestamp(time: Option<&prost_types::Timestamp>, now: SystemTime) -> String {
    let Some(time) = time else {
        return "-".to_owned();
    };
    match SystemTime::try_from(*time) {
        Ok(system) => format!("{time} ({})", relative(system, now)),
        Err(_) => time.to_string(),
    }
}

/// A wire timestamp as RFC 3339 for JSON output (`null` without one).
pub fn timestamp_json(time: Option<&prost_types::Timestamp>) -> serde_json::Value {
    time.map_or(serde_json::Value::Null, |t| serde_json::Value::String(t.to_string()))
}

/// A duration in milliseconds for people: `7 ms`, `1.2 s`.
pub fn millis(ms: u64) -> String {
    if ms < 1000 { format!("{ms} ms") } else { format!("{:.1} s", ms as f64 / 1000.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_has_no_trailing_spaces() {
        let mut table = Table::new(vec![Column::left("NAME"), Column::right("DOCS"), Column::left("NOTE")]);
        table.push(vec!["agent-1".into(), "20".into(), String::new()]);
        table.push(vec!["a".into(), "1234".into(), "down".into()]);
        assert_eq!(
            table.render(),
            "NAME     DOCS  NOTE\n\
             agent-1    20\n\
             a        1234  down\n"
        );
    }

    #[test]
    fn table_truncates_long_cells_to_the_column_limit() {
        let mut table = Table::new(vec![Column::left("TITLE").max_width(10), Column::left("X")]);
        table.push(vec!["a very long title indeed".into(), "x".into()]);
        table.push(vec!["short".into(), "y".into()]);
        let rendered = table.render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[1], "a very lo…  x");
        assert_eq!(lines[2], "short       y");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn render_within_cuts_the_last_column_to_fit() {
        let mut table = Table::new(vec![Column::left("ID"), Column::left("SNIPPET")]);
        table.push(vec!["a-1".into(), "one two three four five six seven".into()]);
        let rendered = table.render_within(20, 5);
        for line in rendered.lines() {
            assert!(line.chars().count() <= 20, "{line:?}");
        }
        assert_eq!(rendered.lines().nth(1), Some("a-1  one two three…"));
        // Too narrow: the last column keeps its minimum.
        let narrow = table.render_within(4, 5);
        assert_eq!(narrow.lines().nth(1), Some("a-1  one…"));
    }

    #[test]
    fn table_widths_ignore_ansi_sequences() {
        let mut table = Table::new(vec![Column::left("A"), Column::left("B")]);
        table.push(vec![format!("{BOLD}bold{RESET}"), "x".into()]);
        table.push(vec!["plain!".into(), "y".into()]);
        let rendered = strip_ansi(&table.render());
        assert_eq!(rendered, "A       B\nbold    x\nplain!  y\n");
    }

    #[test]
    fn empty_columns_are_dropped() {
        let mut table = Table::new(vec![Column::left("A"), Column::left("EMPTY"), Column::left("C")]);
        table.push(vec!["1".into(), String::new(), "3".into()]);
        table.drop_empty_columns();
        assert_eq!(table.render(), "A  C\n1  3\n");
    }

    #[test]
    fn truncate_counts_characters_and_keeps_escapes_whole() {
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello world", 7), "hello…");
        assert_eq!(truncate("ünïcödé text", 6), "ünïcö…");
        let styled = format!("ab{BOLD}cdef{RESET}gh");
        let cut = truncate(&styled, 5);
        assert_eq!(strip_ansi(&cut), "abcd…");
        assert!(cut.ends_with(RESET), "{cut:?}");
        assert_eq!(visible_width(&cut), 5);
    }

    #[test]
    fn strip_ansi_removes_csi_sequences() {
        assert_eq!(strip_ansi("\x1b[1mbold\x1b[0m and \x1b[31;1mred\x1b[m"), "bold and red");
        assert_eq!(visible_width("\x1b[1mbold\x1b[0m"), 4);
    }

    #[test]
    fn clean_removes_control_characters_and_newlines() {
        assert_eq!(clean("  a\nb\t\tc \x1b[2J d\r\n"), "a b c [2J d");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn snippet_plain_strips_tags_and_decodes_entities() {
        let html = "rotate the <b>certificate</b> &amp; its key; a &lt;b&gt; tag is text";
        assert_eq!(snippet(html, false), "rotate the certificate & its key; a <b> tag is text");
    }

    #[test]
    fn snippet_ansi_renders_highlights_bold() {
        let html = "the <b>health</b> <b>check</b> fails";
        assert_eq!(snippet(html, true), format!("the {BOLD}health{RESET} {BOLD}check{RESET} fails"));
        assert_eq!(strip_ansi(&snippet(html, true)), snippet(html, false));
    }

    #[test]
    fn snippet_neutralises_escapes_in_documents() {
        let html = "evil \x1b[31m red\nnext line";
        assert_eq!(snippet(html, true), "evil [31m red next line");
    }

    #[test]
    fn snippet_within_keeps_the_first_highlight_visible() {
        let html = "one two three four five six seven eight nine ten <b>target</b> after words";
        // Fits: unchanged.
        assert_eq!(snippet_within(html, false, 200), snippet(html, false));
        // Would be cut before the highlight: leading words give way, marked with an ellipsis.
        let focused = snippet_within(html, false, 24);
        assert!(focused.starts_with('…'), "{focused}");
        assert!(focused.contains("target"), "{focused}");
        assert!(!focused.starts_with("… "), "starts at a word: {focused}");
        let cut = truncate(&focused, 24);
        assert!(cut.contains("target"), "{cut}");
        // A highlight early enough is left alone.
        let early = "<b>target</b> then a long tail of many other words";
        assert_eq!(snippet_within(early, true, 12), snippet(early, true));
    }

    #[test]
    fn render_within_shrinks_cuttable_columns_before_overflowing() {
        let mut table =
            Table::new(vec![Column::left("ID"), Column::left("TITLE").max_width(40), Column::left("SNIPPET")]);
        table.push(vec!["a".into(), "t".repeat(40), "s".repeat(80)]);
        // 2 ("ID") + 2 + 40 + 2 = 46 used; 60 columns leave 14 < 20, so the title gives 6 up.
        let rendered = table.render_within(60, 20);
        let row = rendered.lines().nth(1).expect("row");
        assert_eq!(row.chars().count(), 60, "{row}");
        assert_eq!(table.last_column_room(60, 20), 20);
        // Too narrow even at the floor: the title stops at MIN_SHRUNK_WIDTH and lines overflow.
        let narrow = table.render_within(20, 20);
        let row = narrow.lines().nth(1).expect("row");
        assert_eq!(row.chars().count(), 2 + 2 + MIN_SHRUNK_WIDTH + 2 + 20, "{row}");
    }

    #[test]
    fn timestamps_show_rfc3339_and_distance_both_ways() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let later = prost_types::Timestamp { seconds: 1_000_900, nanos: 0 };
        let earlier = prost_types::Timestamp { seconds: 999_820, nanos: 0 };
        assert_eq!(timestamp(Some(&later), now), "1970-01-12T14:01:40Z (in 15m)");
        assert_eq!(timestamp(Some(&earlier), now), format!("{earlier} (3m ago)"));
        assert_eq!(timestamp(None, now), "-");
        assert_eq!(timestamp_json(Some(&later)), serde_json::json!(later.to_string()));
        assert!(timestamp_json(None).is_null());
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(Duration::from_millis(420)), "0.4s ago");
        assert_eq!(age(Duration::from_secs(12)), "12s ago");
        assert_eq!(age(Duration::from_secs(190)), "3m ago");
        assert_eq!(age(Duration::from_secs(3 * 3600 + 5)), "3h ago");
        assert_eq!(age(Duration::from_secs(2 * 86_400)), "2d ago");
        assert_eq!(span(Duration::from_secs(59 * 60)), "59m");
        assert_eq!(millis(7), "7 ms");
        assert_eq!(millis(1234), "1.2 s");
    }
}
