//! Structural limits of a query string, checked in linear time before any recursive parser sees it.
//!
//! tantivy's query parser (tantivy-query-grammar 0.27) is a recursive-descent nom parser, and
//! the query it builds is processed recursively afterwards (AST rewriting, logical AST,
//! boolean weights and scorers, drop). Three constructs open a new level of recursion:
//!
//! * a parenthesised group at the start of a clause: `(a b)`, also after `+`, `-`, `AND `, `OR `;
//! * a field group `title:(a b)`;
//! * the `NOT ` keyword, which recurses once per `NOT` in a chain (`NOT NOT NOT a`) and wraps
//!   the group it applies to.
//!
//! Everything else is flat: words, `"phrases"` and `'phrases'`, ranges (`[a TO b]`, `{a TO b}`,
//! `>a`, `<=b`), sets (`IN [a b]`), regexes (`/a.*/`), `*`, `field:*`, boosts, slops, escapes.
//! Inside those, parentheses are plain characters, so a depth count must know where they
//! start and end: [`measure`] follows the lenient grammar's own rules for them, iteratively, so
//! `"((("` is depth 0 and `(a "b)" c)` is depth 1. A few hundred levels abort a process with a
//! 2 MiB stack (a tokio blocking thread); the default limit of 32 leaves a wide margin.

use std::fmt;

/// Deepest nesting of groups, field groups and `NOT` chains accepted by default.
pub const DEFAULT_MAX_DEPTH: usize = 32;
/// Most clauses (words, phrases, ranges, sets, groups...) accepted by default.
pub const DEFAULT_MAX_CLAUSES: usize = 1024;
/// Most terms (runs of letters and digits, the unit tantivy's tokenizer emits) accepted by default.
pub const DEFAULT_MAX_TERMS: usize = 1024;

/// Limits on the structure of a query. [`Default`] gives the limits the mesh enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Deepest nesting of groups, field groups and `NOT` chains.
    pub max_depth: usize,
    /// Most clauses.
    pub max_clauses: usize,
    /// Most terms.
    pub max_terms: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { max_depth: DEFAULT_MAX_DEPTH, max_clauses: DEFAULT_MAX_CLAUSES, max_terms: DEFAULT_MAX_TERMS }
    }
}

/// The structure of a query as tantivy's lenient parser would see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryShape {
    /// Deepest nesting of groups, field groups and `NOT` chains (0 for a flat query).
    pub depth: usize,
    /// Number of clauses: leaves (words, phrases, ranges, sets, regexes, `*`) and groups.
    pub clauses: usize,
    /// Number of runs of letters and digits anywhere in the query: an upper bound on the terms
    /// tantivy's default tokenizer produces.
    pub terms: usize,
}

/// A query whose structure exceeds a [`QueryLimits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryShapeError {
    /// Groups, field groups or `NOT` chains nest too deep.
    #[error("query nests parentheses (or NOT) {depth} deep; the limit is {limit}: simplify the query")]
    TooDeep {
        /// Deepest nesting found.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many clauses.
    #[error("query has {clauses} clauses; the limit is {limit}: split it into smaller queries")]
    TooManyClauses {
        /// Clauses found.
        clauses: usize,
        /// The limit.
        limit: usize,
    },
    /// Too many terms.
    #[error("query has {terms} terms; the limit is {limit}: shorten the query")]
    TooManyTerms {
        /// Terms found.
        terms: usize,
        /// The limit.
        limit: usize,
    },
}

/// Checks the structure of `query` against `limits`; returns its [`QueryShape`] when accepted.
///
/// Pure, non-recursive and linear in the length of `query`; never panics.
pub fn check(query: &str, limits: &QueryLimits) -> Result<QueryShape, QueryShapeError> {
    let shape = measure(query);
    if shape.depth > limits.max_depth {
        return Err(QueryShapeError::TooDeep { depth: shape.depth, limit: limits.max_depth });
    }
    if shape.clauses > limits.max_clauses {
        return Err(QueryShapeError::TooManyClauses { clauses: shape.clauses, limit: limits.max_clauses });
    }
    if shape.terms > limits.max_terms {
        return Err(QueryShapeError::TooManyTerms { terms: shape.terms, limit: limits.max_terms });
    }
    Ok(shape)
}

/// Measures the structure of `query` the way tantivy's lenient parser would walk it.
///
/// Pure, non-recursive and linear in the length of `query`; never panics.
pub fn measure(query: &str) -> QueryShape {
    let terms = count_terms(query);
    // parse_to_ast_lenient returns an empty query for blank input without parsing it.
    if query.chars().all(is_multispace) {
        return QueryShape { depth: 0, clauses: 0, terms };
    }
    let chars: Vec<char> = query.chars().collect();
    let mut walker = Walker::new(&chars);
    walker.walk();
    QueryShape { depth: walker.max_depth, clauses: walker.clauses, terms }
}

/// Counts maximal runs of alphanumeric characters.
fn count_terms(query: &str) -> usize {
    let mut terms = 0;
    let mut in_term = false;
    for c in query.chars() {
        let alnum = c.is_alphanumeric();
        if alnum && !in_term {
            terms += 1;
        }
        in_term = alnum;
    }
    terms
}

/// Characters that cannot appear unescaped in a field name (tantivy's `SPECIAL_CHARS`).
const SPECIAL_CHARS: &[char] = &['+', '^', '`', ':', '{', '}', '"', '\'', '[', ']', '(', ')', '!', '\\', '*', ' '];
/// Characters that end an unescaped word in some contexts (tantivy's `ESCAPE_IN_WORD`).
const ESCAPE_IN_WORD: &[char] = &['^', '`', ':', '{', '}', '"', '\'', '[', ']', '(', ')', '\\'];

/// nom's `multispace` characters.
fn is_multispace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// What one clause turned out to be.
enum Clause {
    /// A leaf was parsed (or nothing was; progress tells).
    Leaf,
    /// A group opened: its clauses follow.
    Group,
}

/// An iterative walk over the lenient grammar of tantivy-query-grammar 0.27
/// (`ast_infallible`, `operand_occur_leaf_infallible`, `leaf_infallible`, `literal_infallible`),
/// with an explicit stack where tantivy recurses.
struct Walker<'a> {
    s: &'a [char],
    pos: usize,
    /// For each open group, how many `NOT`s wrap it.
    groups: Vec<usize>,
    /// `NOT`s read since the last clause started, waiting for their operand.
    pending_nots: usize,
    depth: usize,
    max_depth: usize,
    clauses: usize,
    /// `run_end[i]`: end of the greedy `many0(simple_char | escape | '\\')` run of a field name
    /// that continues at `i`, precomputed so field-name look-ahead stays linear overall.
    run_end: Vec<usize>,
    /// `space_end[i]`: first position at or after `i` that is not a multispace.
    space_end: Vec<usize>,
}

impl<'a> Walker<'a> {
    fn new(s: &'a [char]) -> Self {
        let n = s.len();
        let mut run_end = vec![n; n + 2];
        let mut space_end = vec![n; n + 2];
        for i in (0..n).rev() {
            let c = s[i];
            run_end[i] = if !SPECIAL_CHARS.contains(&c) {
                run_end[i + 1]
            } else if c == '\\' {
                match s.get(i + 1) {
                    Some(next) if SPECIAL_CHARS.contains(next) => run_end[i + 2],
                    _ => run_end[i + 1],
                }
            } else {
                i
            };
            space_end[i] = if is_multispace(c) { space_end[i + 1] } else { i };
        }
        Walker {
            s,
            pos: 0,
            groups: Vec::new(),
            pending_nots: 0,
            depth: 0,
            max_depth: 0,
            clauses: 0,
            run_end,
            space_end,
        }
    }

    fn at(&self, i: usize) -> Option<char> {
        self.s.get(i).copied()
    }

    fn peek(&self) -> Option<char> {
        self.at(self.pos)
    }

    fn starts_with(&self, i: usize, tag: &str) -> bool {
        (i..).zip(tag.chars()).all(|(j, t)| self.at(j) == Some(t))
    }

    fn skip_spaces_from(&self, i: usize) -> usize {
        self.space_end.get(i).copied().unwrap_or(self.s.len())
    }

    fn skip_spaces(&mut self) {
        self.pos = self.skip_spaces_from(self.pos);
    }

    fn enter(&mut self, levels: usize) {
        self.depth += levels;
        self.max_depth = self.max_depth.max(self.depth);
    }

    /// `ast_infallible`, with the recursion into groups unrolled onto `self.groups`.
    fn walk(&mut self) {
        self.skip_spaces();
        // separated_list_infallible keeps its first clause even when it consumed nothing.
        let mut first = true;
        loop {
            let before_sep = self.pos;
            if !first {
                self.skip_spaces();
            }
            let item_start = self.pos;
            if let Clause::Group = self.clause() {
                self.clauses += 1;
                let nots = std::mem::take(&mut self.pending_nots);
                self.groups.push(nots);
                // term_group_infallible and ast_infallible both skip leading spaces.
                self.skip_spaces();
                first = true;
                continue;
            }
            self.leave_nots();
            self.boost();
            if first || self.pos != item_start {
                first = false;
                continue;
            }
            // The clause consumed nothing: the list ends where it stood before the separator,
            // and the enclosing group (if any) closes; its clause in the parent list is done.
            self.pos = before_sep;
            if !self.close_group() {
                return;
            }
        }
    }

    /// Ends the innermost list: trailing spaces, an optional `)`, then the group's boost.
    /// Returns false at the top level (tantivy leaves the rest unparsed).
    fn close_group(&mut self) -> bool {
        let Some(nots) = self.groups.pop() else {
            return false;
        };
        self.skip_spaces();
        if self.peek() == Some(')') {
            self.pos += 1;
        }
        self.depth = self.depth.saturating_sub(1 + nots);
        self.boost();
        true
    }

    /// Drops the `NOT` levels of a chain whose operand was not a group.
    fn leave_nots(&mut self) {
        let nots = std::mem::take(&mut self.pending_nots);
        self.depth = self.depth.saturating_sub(nots);
    }

    /// `operand_occur_leaf_infallible` up to the leaf: `AND `/`OR `, spaces, `+`/`-`, the leaf.
    fn clause(&mut self) -> Clause {
        if self.starts_with(self.pos, "AND ") {
            self.pos += 4;
        } else if self.starts_with(self.pos, "OR ") {
            self.pos += 3;
        }
        self.skip_spaces();
        if matches!(self.peek(), Some('+' | '-')) {
            self.pos += 1;
        }
        self.leaf()
    }

    /// `leaf_infallible`: a group, `*`, a `NOT ` chain or a literal.
    fn leaf(&mut self) -> Clause {
        loop {
            if self.peek() == Some('(') {
                self.pos += 1;
                self.enter(1);
                return Clause::Group;
            }
            if self.peek() == Some('*') && self.star_ends_at(self.pos + 1, true) {
                self.pos += 1;
                self.clauses += 1;
                return Clause::Leaf;
            }
            if self.starts_with(self.pos, "NOT ") {
                self.pos += 4;
                self.pending_nots += 1;
                self.enter(1);
                self.skip_spaces();
                continue;
            }
            return self.literal();
        }
    }

    /// The look-ahead after a `*` that makes it "all documents" or "field exists".
    fn star_ends_at(&self, i: usize, close_paren: bool) -> bool {
        match self.at(i) {
            None => true,
            Some(c) => is_multispace(c) || (close_paren && c == ')') || (ESCAPE_IN_WORD.contains(&c) && c != '\\'),
        }
    }

    /// tantivy's `field_name` at `i`: the position after `name <spaces> : <spaces>`, if any.
    fn field_name_end(&self, i: usize) -> Option<usize> {
        let first = self.at(i)?;
        let run_start = if !SPECIAL_CHARS.contains(&first) && first != '-' {
            i + 1
        } else if first == '\\' && self.at(i + 1).is_some_and(|c| SPECIAL_CHARS.contains(&c)) {
            i + 2
        } else {
            return None;
        };
        let run_end = self.run_end.get(run_start).copied().unwrap_or(self.s.len());
        let colon = self.skip_spaces_from(run_end);
        if self.at(colon) != Some(':') {
            return None;
        }
        Some(self.skip_spaces_from(colon + 1))
    }

    /// `literal_infallible`: field group, field exists, or a flat literal.
    fn literal(&mut self) -> Clause {
        if let Some(after_field) = self.field_name_end(self.pos) {
            let after_spaces = self.skip_spaces_from(after_field);
            if self.at(after_spaces) == Some('(') {
                self.pos = after_spaces + 1;
                self.enter(1);
                return Clause::Group;
            }
            if self.at(after_spaces) == Some('*') && self.star_ends_at(after_spaces + 1, false) {
                self.pos = after_spaces + 1;
                self.clauses += 1;
                return Clause::Leaf;
            }
            self.pos = after_field;
        }
        self.skip_spaces();
        let start = self.pos;
        if self.starts_with(self.pos, "IN") {
            let bracket = self.skip_spaces_from(self.pos + 2);
            if self.at(bracket) == Some('[') {
                self.pos = bracket + 1;
                self.set();
                self.clauses += 1;
                return Clause::Leaf;
            }
        }
        match self.peek() {
            Some('{' | '[' | '>' | '<') => self.range(),
            Some('/') => self.regex(),
            _ => self.term_or_phrase(),
        }
        if self.pos != start {
            self.clauses += 1;
        }
        Clause::Leaf
    }

    /// `simple_term_infallible(")^")` followed by an optional `*` or `~slop`.
    fn term_or_phrase(&mut self) {
        self.simple_term(")^");
        match self.peek() {
            Some('*') => self.pos += 1,
            Some('~') => {
                // nom's u32: digits that fit; otherwise nothing is consumed.
                let mut end = self.pos + 1;
                let mut value: u64 = 0;
                while let Some(d) = self.at(end).and_then(|c| c.to_digit(10)) {
                    value = (value * 10 + u64::from(d)).min(u64::from(u32::MAX) + 1);
                    end += 1;
                }
                if end > self.pos + 1 && value <= u64::from(u32::MAX) {
                    self.pos = end;
                }
            }
            _ => {}
        }
    }

    /// `simple_term_infallible(delimiters)`: a quoted phrase or a word.
    fn simple_term(&mut self, delimiters: &str) {
        match self.peek() {
            Some(quote @ ('"' | '\'')) => {
                self.pos += 1;
                self.quoted(quote);
            }
            _ => self.word(delimiters),
        }
    }

    /// The body of a phrase after its opening quote, through the closing quote if any.
    fn quoted(&mut self, quote: char) {
        while let Some(c) = self.peek() {
            if c == '\\' && self.at(self.pos + 1).is_some() {
                self.pos += 2;
            } else if c == quote {
                self.pos += 1;
                return;
            } else {
                self.pos += 1;
            }
        }
    }

    /// `word_infallible(delimiters)`: spaces then at least one word character, or nothing.
    fn word(&mut self, delimiters: &str) {
        let mut i = self.skip_spaces_from(self.pos);
        let start = i;
        while let Some(c) = self.at(i) {
            if c == '\\' && self.at(i + 1).is_some() {
                i += 2;
            } else if !c.is_whitespace() && !delimiters.contains(c) {
                i += 1;
            } else {
                break;
            }
        }
        if i > start {
            self.pos = i;
        }
    }

    /// `set_infallible`, after `IN [`.
    fn set(&mut self) {
        let mut first = true;
        loop {
            if !first {
                self.skip_spaces();
            }
            first = false;
            match self.peek() {
                None => return,
                Some(']') => {
                    self.pos += 1;
                    return;
                }
                Some(_) => {}
            }
            let before = self.pos;
            self.simple_term("]");
            if self.pos == before {
                return;
            }
        }
    }

    /// `range_infallible`: `>=x`, `<=x`, `>x`, `<x`, or `[a TO b]` / `{a TO b}` and variants.
    fn range(&mut self) {
        for tag in [">=", "<=", ">", "<"] {
            if self.starts_with(self.pos, tag) {
                self.pos += tag.len();
                self.word(")");
                return;
            }
        }
        // opt_i(anychar): the `[` or `{` the caller peeked.
        self.pos += 1;
        self.skip_spaces();
        self.word("]}");
        self.skip_spaces();
        if self.starts_with(self.pos, "TO") {
            let after = self.pos + 2;
            match self.at(after) {
                None => self.pos = after,
                Some(c) if is_multispace(c) => self.pos = self.skip_spaces_from(after),
                Some(_) => {}
            }
        }
        self.word("]}");
        if matches!(self.peek(), Some(']' | '}')) {
            self.pos += 1;
        }
    }

    /// `regex_infallible`: `/pattern/`; inside, only `\/` is an escape.
    fn regex(&mut self) {
        // The caller peeked the opening `/`.
        self.pos += 1;
        while let Some(c) = self.peek() {
            if c == '\\' && self.at(self.pos + 1) == Some('/') {
                self.pos += 2;
            } else if c == '/' {
                self.pos += 1;
                return;
            } else {
                self.pos += 1;
            }
        }
    }

    /// `boost`: an optional `^` followed by a positive number.
    fn boost(&mut self) {
        if self.peek() != Some('^') {
            return;
        }
        let digits_from = |walker: &Self, i: usize| {
            let mut j = i;
            while walker.at(j).is_some_and(|c| c.is_ascii_digit()) {
                j += 1;
            }
            j
        };
        let int_end = digits_from(self, self.pos + 1);
        if int_end == self.pos + 1 {
            return;
        }
        self.pos = int_end;
        if self.peek() == Some('.') {
            let frac_end = digits_from(self, self.pos + 1);
            if frac_end > self.pos + 1 {
                self.pos = frac_end;
            }
        }
    }
}

impl fmt::Display for QueryShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "depth {}, {} clauses, {} terms", self.depth, self.clauses, self.terms)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn depth(query: &str) -> usize {
        measure(query).depth
    }

    #[test]
    fn flat_queries_have_depth_zero() {
        for query in
            ["", "   ", "a", "a b c", "title:a", "\"a (b\"", "'((('", "[( TO )]", "/(((/", "a(b(c", "IN [( ( (]"]
        {
            assert_eq!(depth(query), 0, "{query:?}");
        }
    }

    #[test]
    fn groups_field_groups_and_not_chains_nest() {
        assert_eq!(depth("(a)"), 1);
        assert_eq!(depth("((a) b)"), 2);
        assert_eq!(depth("(a) (b) (c)"), 1);
        assert_eq!(depth("title:(body:(a))"), 2);
        assert_eq!(depth("NOT NOT NOT a"), 3);
        assert_eq!(depth("NOT (NOT (a))"), 4);
        assert_eq!(depth("+(-(+(a)))"), 3);
        assert_eq!(depth("(a \"b)\" (c))"), 2);
        assert_eq!(depth("(a\\) (b))"), 2);
    }

    #[test]
    fn the_reported_query_is_refused_with_a_clear_message() {
        let query = format!("{}a{}", "(".repeat(400), ")".repeat(400));
        let err = check(&query, &QueryLimits::default()).expect_err("too deep");
        assert_eq!(err, QueryShapeError::TooDeep { depth: 400, limit: 32 });
        assert_eq!(err.to_string(), "query nests parentheses (or NOT) 400 deep; the limit is 32: simplify the query");
    }

    #[test]
    fn clauses_and_terms_are_limited() {
        let limits = QueryLimits { max_depth: 32, max_clauses: 3, max_terms: 5 };
        assert!(check("a b c", &limits).is_ok());
        assert!(matches!(check("a b c d", &limits), Err(QueryShapeError::TooManyClauses { clauses: 4, limit: 3 })));
        assert!(matches!(check("\"a b c d e f\"", &limits), Err(QueryShapeError::TooManyTerms { terms: 6, limit: 5 })));
    }

    #[test]
    fn natural_language_passes() {
        let query = "what's the role of TCP/IP (and UDP) in \"modern\" networks? e.g. [RFC 793]";
        let shape = check(query, &QueryLimits::default()).expect("ordinary text");
        assert_eq!(shape.depth, 1);
    }

    /// Pieces that open, close or hide nesting, for generating hostile queries.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "(", ")", "a", " ", "NOT ", "+", "-", "\"", "'", "\\", "/", "[", "]", "{", "}", "TO ", "IN [", "f:", "*",
            "^2", "~1", "AND ", "OR ", "\t", "é", ":",
        ])
    }

    proptest! {
        #[test]
        fn measure_never_panics(query in ".{0,300}") {
            let _ = check(&query, &QueryLimits::default());
        }

        #[test]
        fn measure_never_panics_on_grammar_pieces(pieces in prop::collection::vec(piece(), 0..200)) {
            let _ = measure(&pieces.concat());
        }

        #[test]
        fn depth_is_at_most_the_openers(pieces in prop::collection::vec(piece(), 0..200)) {
            let query = pieces.concat();
            let openers = query.matches('(').count() + query.matches("NOT ").count();
            prop_assert!(depth(&query) <= openers);
        }
    }

    #[test]
    fn measure_is_linear() {
        // Inputs built to make a naive look-ahead quadratic: long runs re-scanned per word.
        let shapes = [
            "a\t".to_owned(),
            "(".to_owned(),
            "NOT ".to_owned(),
            "a\\".to_owned(),
            "IN ".to_owned(),
            "\"(".to_owned(),
            "x:".to_owned(),
        ];
        for unit in shapes {
            let small = unit.repeat(20_000);
            let large = unit.repeat(160_000);
            let time = |query: &str| {
                let started = std::time::Instant::now();
                let _ = measure(query);
                started.elapsed()
            };
            let (t_small, t_large) = (time(&small), time(&large));
            // 8x the input; allow generous noise but not the 64x of a quadratic walk.
            assert!(
                t_large <= t_small * 24 + std::time::Duration::from_millis(50),
                "{unit:?}: {t_small:?} for 20k, {t_large:?} for 160k"
            );
        }
    }
}
