//! `ragmeshctl search`: one federated search through the master, shown as the merged hits and
//! what every node did (ok, timeout, unavailable, error, skipped), or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use ragmesh_proto::v1;
use serde_json::{Value, json};

use crate::args::SearchArgs;
use crate::client::Master;
use crate::render::{self, Column, Table, clean};

/// Deadline the master applies when the request sets none is its `--search-timeout-ms`; the
/// gRPC deadline must then cover the largest value the master accepts (its default maximum).
const UNSET_TIMEOUT_GRPC_DEADLINE: Duration = Duration::from_secs(30);
/// Longest title shown in the hits table.
const TITLE_WIDTH: usize = 40;
/// Longest `collection/id` shown in the hits table.
const DOCUMENT_WIDTH: usize = 36;
/// Snippet width when stdout is not a terminal (pipes, files).
const PIPE_SNIPPET_WIDTH: usize = 100;
/// Narrowest useful snippet column; on a narrower terminal snippets get their own lines.
const MIN_SNIPPET_COLUMN: usize = 40;
/// Narrowest title column when snippets have their own lines.
const MIN_TITLE_WIDTH: usize = 20;
/// Index of the snippet column in the hits table.
const SNIPPET_COLUMN: usize = 6;

/// How the output is decorated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    /// Bold highlights (only on a terminal).
    pub ansi: bool,
    /// Terminal width, when stdout is one.
    pub width: Option<usize>,
}

impl Style {
    /// The style for the current stdout.
    pub fn for_stdout() -> Self {
        let term = console::Term::stdout();
        let width = term.is_term().then(|| term.size_checked()).flatten().map(|(_rows, cols)| usize::from(cols));
        Style { ansi: render::stdout_supports_ansi(), width }
    }

    /// No decoration, fixed widths: for tests and logs.
    pub fn plain() -> Self {
        Style { ansi: false, width: None }
    }
}

/// The `timeout_ms` to send and the gRPC deadline to set. The deadline sits slightly above the
/// search timeout, so the master's partial answer (every node's status) arrives before the
/// client gives up.
pub fn deadlines(timeout_ms: Option<u32>) -> (u32, Duration) {
    match timeout_ms {
        None => (0, UNSET_TIMEOUT_GRPC_DEADLINE),
        Some(ms) => {
            let budget = Duration::from_millis(u64::from(ms));
            let slack = (budget / 10).clamp(Duration::from_millis(200), Duration::from_secs(2));
            (ms, budget + slack)
        }
    }
}

/// The wire request for `args`.
pub fn request(args: &SearchArgs, timeout_ms: u32) -> v1::SearchRequest {
    v1::SearchRequest {
        query: args.query.clone(),
        collections: args.collections.clone(),
        limit: args.limit,
        nodes: args.nodes.clone(),
        timeout_ms,
        min_score: args.min_score,
        merge: args.merge.wire().to_owned(),
        bypass_cache: args.no_cache,
    }
}

/// Runs `search` and prints the result.
pub async fn run(master: &Master, args: &SearchArgs, timeout_ms: Option<u32>) -> anyhow::Result<()> {
    if args.query.trim().is_empty() {
        return Err(crate::error::usage("the query is empty: pass the words to search for"));
    }
    if !args.min_score.is_finite() {
        return Err(crate::error::usage("--min-score must be a finite number"));
    }
    let (timeout_ms, deadline) = deadlines(timeout_ms);
    let (response, trace_id) = master.search_traced(request(args, timeout_ms), deadline).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&with_trace_id(to_json(&response), trace_id.as_deref()))?);
    } else {
        print!("{}", render(&response, &args.query, Style::for_stdout()));
        if let Some(trace_id) = &trace_id {
            println!("{}", trace_line(trace_id));
        }
    }
    Ok(())
}

/// The line naming the trace of a search, for a user to paste into Jaeger's search box.
pub fn trace_line(trace_id: &str) -> String {
    format!("trace {trace_id} (find it in Jaeger, or whichever collector the master exports to)")
}

/// The JSON answer with `trace_id`: the trace's id, or null when the master does not export
/// traces (or did not sample this one).
pub fn with_trace_id(mut value: Value, trace_id: Option<&str>) -> Value {
    if let Value::Object(map) = &mut value {
        map.insert("trace_id".to_owned(), trace_id.map_or(Value::Null, |id| Value::String(id.to_owned())));
    }
    value
}

/// The status word of a node outcome: `ok`, `timeout`, `unavailable`, `error`,
/// `skipped (down)`, `skipped (not routed)`.
pub fn status_label(outcome: &v1::NodeOutcome) -> String {
    match v1::OutcomeStatus::try_from(outcome.status) {
        Ok(v1::OutcomeStatus::Ok) => "ok".to_owned(),
        Ok(v1::OutcomeStatus::Timeout) => "timeout".to_owned(),
        Ok(v1::OutcomeStatus::Unavailable) => "unavailable".to_owned(),
        Ok(v1::OutcomeStatus::Error) => "error".to_owned(),
        Ok(v1::OutcomeStatus::Cancelled) => "cancelled".to_owned(),
        Ok(v1::OutcomeStatus::Skipped) => format!("skipped ({})", skip_reason(outcome).replace('_', " ")),
        Ok(v1::OutcomeStatus::Unspecified) | Err(_) => "unknown".to_owned(),
    }
}

fn status_word(outcome: &v1::NodeOutcome) -> &'static str {
    status_word_of(outcome.status)
}

fn status_word_of(status: i32) -> &'static str {
    match v1::OutcomeStatus::try_from(status) {
        Ok(v1::OutcomeStatus::Ok) => "ok",
        Ok(v1::OutcomeStatus::Timeout) => "timeout",
        Ok(v1::OutcomeStatus::Unavailable) => "unavailable",
        Ok(v1::OutcomeStatus::Error) => "error",
        Ok(v1::OutcomeStatus::Cancelled) => "cancelled",
        Ok(v1::OutcomeStatus::Skipped) => "skipped",
        Ok(v1::OutcomeStatus::Unspecified) | Err(_) => "unknown",
    }
}

fn skip_reason(outcome: &v1::NodeOutcome) -> &'static str {
    skip_reason_of(outcome.skip_reason)
}

fn skip_reason_of(reason: i32) -> &'static str {
    match v1::SkipReason::try_from(reason) {
        Ok(v1::SkipReason::Down) => "down",
        Ok(v1::SkipReason::NotRouted) => "not_routed",
        Ok(v1::SkipReason::BreakerOpen) => "breaker_open",
        Ok(v1::SkipReason::NotInSync) => "not_in_sync",
        Ok(v1::SkipReason::OtherReplica) => "other_replica",
        Ok(v1::SkipReason::NoMatch) => "no_match",
        Ok(v1::SkipReason::Unspecified) | Err(_) => "unknown",
    }
}

fn is_ok(outcome: &v1::NodeOutcome) -> bool {
    outcome.status == v1::OutcomeStatus::Ok as i32
}

fn is_skipped(outcome: &v1::NodeOutcome) -> bool {
    outcome.status == v1::OutcomeStatus::Skipped as i32
}

/// The readable result: hits table, node status table, and a summary that says plainly when
/// the results may be incomplete.
pub fn render(response: &v1::SearchResponse, query: &str, style: Style) -> String {
    let mut out = String::new();
    if response.hits.is_empty() {
        let _ = writeln!(out, "no hits for {:?}", clean(query));
    } else {
        out.push_str(&hits_table(&response.hits, style));
    }
    out.push('\n');
    out.push_str(&nodes_table(&response.nodes));
    if shows_replication(&response.groups) {
        out.push('\n');
        out.push_str(&groups_table(&response.groups));
    }
    out.push('\n');
    out.push_str(&summary(response));
    out
}

/// Whether the groups table says more than the nodes table: some group has replicas (its
/// answer came from a node not named like it) or needed more than one attempt.
fn shows_replication(groups: &[v1::GroupOutcome]) -> bool {
    groups.iter().any(|g| g.attempts.len() > 1 || (!g.answered_by.is_empty() && g.answered_by != g.shard))
}

/// The word for a group's status: `ok`, `timeout`, ..., `skipped (down)`.
fn group_status_label(group: &v1::GroupOutcome) -> String {
    match status_word_of(group.status) {
        "skipped" => format!("skipped ({})", skip_reason_of(group.skip_reason).replace('_', " ")),
        word => word.to_owned(),
    }
}

/// What every shard group did: SHARD STATUS ANSWERED-BY ATTEMPTS MESSAGE, where ATTEMPTS lists
/// each call as `node kind status` (kind: first, retry, hedge).
pub fn groups_table(groups: &[v1::GroupOutcome]) -> String {
    let mut table = Table::new(vec![
        Column::left("SHARD"),
        Column::left("STATUS"),
        Column::left("ANSWERED BY"),
        Column::left("ATTEMPTS"),
        Column::left("MESSAGE"),
    ]);
    for group in groups {
        let attempts: Vec<String> = group
            .attempts
            .iter()
            .map(|a| {
                let kind = match v1::AttemptKind::try_from(a.kind) {
                    Ok(v1::AttemptKind::Retry) => "retry",
                    Ok(v1::AttemptKind::Hedge) => "hedge",
                    _ => "first",
                };
                format!(
                    "{} {kind} {} {}",
                    clean(&a.node),
                    status_word_of(a.status),
                    render::millis(u64::from(a.took_ms))
                )
            })
            .collect();
        table.push(vec![
            clean(&group.shard),
            group_status_label(group),
            if group.answered_by.is_empty() { "-".to_owned() } else { clean(&group.answered_by) },
            if attempts.is_empty() { "-".to_owned() } else { attempts.join(", ") },
            clean(&group.message),
        ]);
    }
    table.drop_empty_columns();
    table.render()
}

/// The merged hits: # SCORE (merged) BM25 (the node's own score) NODE DOCUMENT TITLE SNIPPET.
///
/// On a terminal too narrow for a useful snippet column, each snippet goes on its own indented
/// line under its hit instead.
pub fn hits_table(hits: &[v1::Hit], style: Style) -> String {
    let Some(width) = style.width else {
        // Not a terminal: one line per hit, snippets cut at a fixed width.
        let mut table = hits_columns(hits, Some(PIPE_SNIPPET_WIDTH));
        fill_snippets(&mut table, hits, style.ansi, PIPE_SNIPPET_WIDTH);
        return table.render();
    };
    let mut table = hits_columns(hits, None);
    if table.last_column_room(width, 0) >= MIN_SNIPPET_COLUMN {
        let room = table.last_column_room(width, MIN_SNIPPET_COLUMN);
        fill_snippets(&mut table, hits, style.ansi, room);
        return table.render_within(width, MIN_SNIPPET_COLUMN);
    }
    table.drop_last_column();
    let rendered = table.render_within(width, MIN_TITLE_WIDTH);
    let indent = " ".repeat(hits.len().to_string().len() + 2);
    let room = width.saturating_sub(indent.len()).max(MIN_SNIPPET_COLUMN);
    let mut out = String::new();
    let mut lines = rendered.lines();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for (line, hit) in lines.zip(hits) {
        out.push_str(line);
        out.push('\n');
        let snippet = render::snippet_within(&hit.snippet, style.ansi, room);
        if !snippet.is_empty() {
            out.push_str(&indent);
            out.push_str(&render::truncate(&snippet, room));
            out.push('\n');
        }
    }
    out
}

/// The hits table with an empty SNIPPET column (cut at `snippet_max` when given).
fn hits_columns(hits: &[v1::Hit], snippet_max: Option<usize>) -> Table {
    let snippet = match snippet_max {
        Some(max) => Column::left("SNIPPET").max_width(max),
        None => Column::left("SNIPPET"),
    };
    let mut table = Table::new(vec![
        Column::right("#"),
        Column::right("SCORE"),
        Column::right("BM25"),
        Column::left("NODE"),
        Column::left("DOCUMENT").max_width(DOCUMENT_WIDTH),
        Column::left("TITLE").max_width(TITLE_WIDTH),
        snippet,
    ]);
    for (rank, hit) in hits.iter().enumerate() {
        let node = match hit.also_on.len() {
            0 => clean(&hit.node),
            n => format!("{} (+{n})", clean(&hit.node)),
        };
        table.push(vec![
            (rank + 1).to_string(),
            format!("{:.4}", hit.score),
            format!("{:.2}", hit.node_score),
            node,
            format!("{}/{}", clean(&hit.collection), clean(&hit.doc_id)),
            clean(&hit.title),
            String::new(),
        ]);
    }
    table
}

/// Snippets go in once their room is known, so each can show its first highlight.
fn fill_snippets(table: &mut Table, hits: &[v1::Hit], ansi: bool, room: usize) {
    for (row, hit) in hits.iter().enumerate() {
        table.set_cell(row, SNIPPET_COLUMN, render::snippet_within(&hit.snippet, ansi, room));
    }
}

/// What every node did: NODE STATUS TOOK HITS GEN MESSAGE.
pub fn nodes_table(nodes: &[v1::NodeOutcome]) -> String {
    if nodes.is_empty() {
        return "no nodes were considered: no agent has registered with the master (see \
                `ragmeshctl nodes`)\n"
            .to_owned();
    }
    let mut table = Table::new(vec![
        Column::left("NODE"),
        Column::left("STATUS"),
        Column::right("TOOK"),
        Column::right("HITS"),
        Column::right("GEN"),
        Column::left("MESSAGE"),
    ]);
    for outcome in nodes {
        let answered = is_ok(outcome);
        table.push(vec![
            clean(&outcome.node),
            status_label(outcome),
            if is_skipped(outcome) { "-".to_owned() } else { render::millis(u64::from(outcome.took_ms)) },
            if answered { outcome.hit_count.to_string() } else { "-".to_owned() },
            if answered { outcome.generation.to_string() } else { "-".to_owned() },
            clean(&outcome.message),
        ]);
    }
    table.drop_empty_columns();
    table.render()
}

/// Whether `group` was skipped for `reason`.
fn group_skipped(group: &v1::GroupOutcome, reason: v1::SkipReason) -> bool {
    group.status == v1::OutcomeStatus::Skipped as i32 && group.skip_reason == reason as i32
}

/// Whether `group`'s part of the answer is known: a replica answered, or its term summary
/// proved it holds no match (nothing can be missing from it).
fn group_answered(group: &v1::GroupOutcome) -> bool {
    group.status == v1::OutcomeStatus::Ok as i32 || group_skipped(group, v1::SkipReason::NoMatch)
}

/// One line of counts, plus a second naming the nodes whose results are missing.
fn summary(response: &v1::SearchResponse) -> String {
    let asked: Vec<&v1::NodeOutcome> = response.nodes.iter().filter(|n| !is_skipped(n)).collect();
    let answered = asked.iter().filter(|n| is_ok(n)).count();
    let skipped = response.nodes.len() - asked.len();
    let mut out = if response.groups.is_empty() {
        format!("{} hits from {answered} of {} nodes asked", response.hits.len(), asked.len())
    } else {
        let routed: Vec<&v1::GroupOutcome> =
            response.groups.iter().filter(|g| !group_skipped(g, v1::SkipReason::NotRouted)).collect();
        let answered = routed.iter().filter(|g| group_answered(g)).count();
        let mut line = format!("{} hits from {answered} of {} shard groups", response.hits.len(), routed.len());
        let proven = routed.iter().filter(|g| group_skipped(g, v1::SkipReason::NoMatch)).count();
        if proven > 0 {
            let _ = write!(line, " ({proven} without a call: their term summaries prove no match)");
        }
        line
    };
    if response.groups.is_empty() && skipped > 0 {
        let _ = write!(out, " ({skipped} skipped)");
    }
    let _ = write!(out, " in {}", render::millis(u64::from(response.took_ms)));
    if response.cached {
        // The master answered from its result cache (no fan-out for this call).
        out.push_str(" (cached)");
    }
    if response.hits.is_empty() {
        out.push('\n');
    } else {
        let legend = match response.merge_strategy.as_str() {
            "global_bm25" => "SCORE = BM25 with the statistics of every node asked (as one index)".to_owned(),
            other => format!("SCORE = {} merge score, BM25 = score on its node", clean(other)),
        };
        let _ = writeln!(out, "; {legend}");
    }
    if !response.groups.is_empty() {
        // With shard groups, results are incomplete only where a routed group has no answer;
        // a replica that failed while another answered for its group lost nothing.
        let missing: Vec<String> = response
            .groups
            .iter()
            .filter(|g| !group_answered(g) && !group_skipped(g, v1::SkipReason::NotRouted))
            .map(|g| format!("shard group {} {}", clean(&g.shard), group_status_label(g)))
            .collect();
        if !missing.is_empty() {
            let _ = writeln!(out, "results may be incomplete: {}", missing.join(", "));
        }
        return out;
    }
    // Nodes holding none of the requested collections cannot have missed hits; all others can.
    let missing: Vec<String> = response
        .nodes
        .iter()
        .filter(|n| {
            let cannot_miss = is_skipped(n) && matches!(skip_reason(n), "not_routed" | "no_match");
            !is_ok(n) && !cannot_miss
        })
        .map(|n| format!("{} {}", clean(&n.node), status_label(n)))
        .collect();
    if !missing.is_empty() {
        let _ = writeln!(out, "results may be incomplete: {}", missing.join(", "));
    }
    out
}

/// The whole response as JSON: the snippet keeps its `<b>` markup, numbers stay numbers.
pub fn to_json(response: &v1::SearchResponse) -> Value {
    let hits: Vec<Value> = response
        .hits
        .iter()
        .enumerate()
        .map(|(rank, hit)| {
            let mut metadata: Vec<(&String, &String)> = hit.metadata.iter().collect();
            metadata.sort();
            let metadata: serde_json::Map<String, Value> =
                metadata.into_iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
            json!({
                "rank": rank + 1,
                "score": hit.score,
                "node": hit.node,
                "collection": hit.collection,
                "doc_id": hit.doc_id,
                "title": hit.title,
                "snippet": hit.snippet,
                "node_score": hit.node_score,
                "node_rank": hit.node_rank,
                "also_on": hit.also_on,
                "metadata": metadata,
            })
        })
        .collect();
    let nodes: Vec<Value> = response
        .nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "status": status_word(n),
                "skip_reason": is_skipped(n).then(|| skip_reason(n)),
                "message": n.message,
                "took_ms": n.took_ms,
                "hit_count": n.hit_count,
                "generation": n.generation,
            })
        })
        .collect();
    let groups: Vec<Value> = response
        .groups
        .iter()
        .map(|g| {
            let attempts: Vec<Value> = g
                .attempts
                .iter()
                .map(|a| {
                    let kind = v1::AttemptKind::try_from(a.kind).map_or("unknown", |k| match k {
                        v1::AttemptKind::First => "first",
                        v1::AttemptKind::Retry => "retry",
                        v1::AttemptKind::Hedge => "hedge",
                        v1::AttemptKind::Unspecified => "unknown",
                    });
                    json!({
                        "node": a.node,
                        "kind": kind,
                        "status": status_word_of(a.status),
                        "message": a.message,
                        "took_ms": a.took_ms,
                    })
                })
                .collect();
            json!({
                "shard": g.shard,
                "status": status_word_of(g.status),
                "skip_reason": (g.status == v1::OutcomeStatus::Skipped as i32).then(|| skip_reason_of(g.skip_reason)),
                "answered_by": g.answered_by,
                "message": g.message,
                "attempts": attempts,
            })
        })
        .collect();
    json!({
        "hits": hits,
        "nodes": nodes,
        "groups": groups,
        "took_ms": response.took_ms,
        "merge_strategy": response.merge_strategy,
        "cached": response.cached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_answer_carries_the_trace_id_or_null() {
        let response = v1::SearchResponse::default();
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(with_trace_id(to_json(&response), Some(id))["trace_id"], json!(id));
        assert_eq!(with_trace_id(to_json(&response), None)["trace_id"], Value::Null);
        assert!(trace_line(id).starts_with("trace 4bf92f3577b34da6a3ce929d0e0e4736 "));
    }

    fn hit(node: &str, id: &str, title: &str, snippet: &str, score: f64) -> v1::Hit {
        v1::Hit {
            node: node.to_owned(),
            doc_id: id.to_owned(),
            collection: "guides".to_owned(),
            title: title.to_owned(),
            snippet: snippet.to_owned(),
            score,
            node_score: score * 100.0,
            node_rank: 1,
            ..Default::default()
        }
    }

    fn outcome(node: &str, status: v1::OutcomeStatus, hits: u32) -> v1::NodeOutcome {
        v1::NodeOutcome {
            node: node.to_owned(),
            status: status as i32,
            took_ms: 3,
            hit_count: hits,
            generation: 2,
            ..Default::default()
        }
    }

    fn response() -> v1::SearchResponse {
        let mut timeout = outcome("agent-3", v1::OutcomeStatus::Timeout, 0);
        timeout.message = "no answer within 2000 ms".to_owned();
        let mut down = outcome("agent-4", v1::OutcomeStatus::Skipped, 0);
        down.skip_reason = v1::SkipReason::Down as i32;
        down.message = "node is down".to_owned();
        down.took_ms = 0;
        v1::SearchResponse {
            hits: vec![
                hit("agent-1", "rotate", "Rotating certificates", "the <b>certificate</b> rotation", 0.0328),
                hit("agent-2", "renew", &"A very long title ".repeat(5), &"word ".repeat(60), 0.0161),
            ],
            nodes: vec![
                outcome("agent-1", v1::OutcomeStatus::Ok, 1),
                outcome("agent-2", v1::OutcomeStatus::Ok, 1),
                timeout,
                down,
            ],
            took_ms: 12,
            groups: Vec::new(),
            merge_strategy: "rrf".to_owned(),
            cached: false,
        }
    }

    #[test]
    fn a_cached_answer_says_so_in_the_summary_and_the_json() {
        let fresh = response();
        assert!(!summary(&fresh).contains("(cached)"), "{}", summary(&fresh));
        assert_eq!(to_json(&fresh)["cached"], json!(false));
        let cached = v1::SearchResponse { cached: true, ..response() };
        assert!(summary(&cached).contains(" in 12 ms (cached)"), "{}", summary(&cached));
        assert_eq!(to_json(&cached)["cached"], json!(true));
    }

    #[test]
    fn a_replica_that_failed_while_its_group_answered_does_not_make_results_incomplete() {
        let attempt = |node: &str, kind: v1::AttemptKind, status: v1::OutcomeStatus| v1::Attempt {
            node: node.to_owned(),
            kind: kind as i32,
            status: status as i32,
            took_ms: 2,
            ..Default::default()
        };
        let mut response = response();
        response.groups = vec![
            v1::GroupOutcome {
                shard: "east".to_owned(),
                status: v1::OutcomeStatus::Ok as i32,
                answered_by: "east-2".to_owned(),
                attempts: vec![
                    attempt("east-1", v1::AttemptKind::First, v1::OutcomeStatus::Unavailable),
                    attempt("east-2", v1::AttemptKind::Retry, v1::OutcomeStatus::Ok),
                ],
                ..Default::default()
            },
            v1::GroupOutcome {
                shard: "west".to_owned(),
                status: v1::OutcomeStatus::Skipped as i32,
                skip_reason: v1::SkipReason::Down as i32,
                message: "every replica of the group is down".to_owned(),
                ..Default::default()
            },
        ];
        let text = render(&response, "certificate", Style::plain());
        assert!(text.contains("east-1 first unavailable"), "{text}");
        assert!(text.contains("east-2 retry ok"), "{text}");
        assert!(text.contains("results may be incomplete: shard group west skipped (down)"), "{text}");
        assert!(!text.contains("agent-3 timeout,"), "nodes no longer decide completeness: {text}");
        let json = to_json(&response);
        assert_eq!(json["groups"][0]["answered_by"], "east-2");
        assert_eq!(json["groups"][0]["attempts"][1]["kind"], "retry");
        assert_eq!(json["groups"][1]["skip_reason"], "down");
        response.groups.truncate(1);
        let text = render(&response, "certificate", Style::plain());
        assert!(!text.contains("incomplete"), "every group answered: {text}");

        // A group whose term summary proves it holds no match answered too: nothing is missing.
        response.groups.push(v1::GroupOutcome {
            shard: "north".to_owned(),
            status: v1::OutcomeStatus::Skipped as i32,
            skip_reason: v1::SkipReason::NoMatch as i32,
            ..Default::default()
        });
        let text = render(&response, "certificate", Style::plain());
        assert!(!text.contains("incomplete"), "a proven no-match is an answer: {text}");
        assert!(text.contains("from 2 of 2 shard groups (1 without a call"), "{text}");
    }

    #[test]
    fn deadline_sits_slightly_above_the_search_timeout() {
        assert_eq!(deadlines(Some(2000)), (2000, Duration::from_millis(2200)));
        assert_eq!(deadlines(Some(100)), (100, Duration::from_millis(300)));
        assert_eq!(deadlines(Some(60_000)), (60_000, Duration::from_secs(62)));
        assert_eq!(deadlines(None), (0, UNSET_TIMEOUT_GRPC_DEADLINE));
    }

    #[test]
    fn rendered_result_is_aligned_truncated_and_honest() {
        let out = render(&response(), "certificate rotation", Style::plain());
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("#   SCORE  BM25  NODE     DOCUMENT       TITLE "), "{out}");
        assert!(lines[1].starts_with("1  0.0328  3.28  agent-1  guides/rotate  Rotating certificates "), "{out}");
        assert!(lines[1].ends_with("the certificate rotation"), "{out}");
        // Columns line up: every row's snippet starts under the header.
        let snippet_col = lines[0].find("SNIPPET").expect("header");
        assert_eq!(lines[1].find("the certificate"), Some(snippet_col), "{out}");
        // The long title is cut to 40 characters, the snippet to the pipe width.
        let long_title = render::truncate(&clean(&"A very long title ".repeat(5)), TITLE_WIDTH);
        assert_eq!(long_title.chars().count(), TITLE_WIDTH);
        assert!(lines[2].contains(&long_title), "{out}");
        assert_eq!(lines[2].chars().skip(snippet_col).count(), PIPE_SNIPPET_WIDTH, "{out}");
        assert!(out.lines().all(|l| !l.contains("<b>")), "{out}");

        assert!(out.contains("agent-3  timeout"), "{out}");
        assert!(out.contains("agent-4  skipped (down)"), "{out}");
        assert!(out.contains("no answer within 2000 ms"), "{out}");
        assert!(out.contains("2 hits from 2 of 3 nodes asked (1 skipped) in 12 ms; SCORE = rrf merge score"), "{out}");
        assert!(out.contains("results may be incomplete: agent-3 timeout, agent-4 skipped (down)"), "{out}");
    }

    #[test]
    fn wide_terminal_gets_a_snippet_column_in_bold() {
        let style = Style { ansi: true, width: Some(160) };
        let out = hits_table(&response().hits, style);
        for line in out.lines() {
            assert!(render::visible_width(line) <= 160, "{line:?}");
        }
        assert_eq!(out.lines().count(), 3, "one line per hit:\n{out}");
        assert!(out.lines().next().is_some_and(|h| h.ends_with("SNIPPET")), "{out}");
        // The long snippet was cut to the room left.
        assert!(out.lines().nth(2).is_some_and(|l| l.ends_with('…')), "{out}");
        assert!(out.contains("\x1b[1mcertificate\x1b[0m"), "{out:?}");
    }

    #[test]
    fn narrow_terminal_puts_snippets_on_their_own_lines() {
        let style = Style { ansi: false, width: Some(80) };
        let out = hits_table(&response().hits, style);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 5, "header, then hit and snippet lines:\n{out}");
        assert!(lines[0].ends_with("TITLE"), "{out}");
        assert_eq!(lines[2], "   the certificate rotation");
        assert!(lines[4].starts_with("   word word"), "{out}");
        for line in &lines {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
    }

    #[test]
    fn status_labels_use_the_shared_vocabulary() {
        let mut skipped = outcome("n", v1::OutcomeStatus::Skipped, 0);
        skipped.skip_reason = v1::SkipReason::NotRouted as i32;
        assert_eq!(status_label(&skipped), "skipped (not routed)");
        assert_eq!(status_label(&outcome("n", v1::OutcomeStatus::Unavailable, 0)), "unavailable");
        assert_eq!(status_label(&outcome("n", v1::OutcomeStatus::Error, 0)), "error");
    }

    #[test]
    fn not_routed_nodes_do_not_make_results_incomplete() {
        let mut response = response();
        response.nodes.truncate(2);
        let mut skipped = outcome("agent-9", v1::OutcomeStatus::Skipped, 0);
        skipped.skip_reason = v1::SkipReason::NotRouted as i32;
        response.nodes.push(skipped);
        let out = render(&response, "q", Style::plain());
        assert!(!out.contains("incomplete"), "{out}");
    }

    #[test]
    fn json_has_hits_nodes_took_and_strategy() {
        let value = to_json(&response());
        assert_eq!(value["hits"][0]["rank"], 1);
        assert_eq!(value["hits"][0]["snippet"], "the <b>certificate</b> rotation");
        assert_eq!(value["nodes"][2]["status"], "timeout");
        assert!(value["nodes"][2]["skip_reason"].is_null());
        assert_eq!(value["nodes"][3]["skip_reason"], "down");
        assert_eq!(value["took_ms"], 12);
        assert_eq!(value["merge_strategy"], "rrf");
    }
}
