//! `ragmeshctl stats`: the master's `Stats` as tables (nodes, shard groups, collections) or JSON.

use std::fmt::Write as _;

use ragmesh_proto::v1;
use serde_json::{Value, json};

use crate::render::{Column, Table};

/// Bytes for people: B, KiB, MiB, GiB with one decimal.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn collections(list: &[v1::CollectionStats]) -> String {
    if list.is_empty() {
        return "-".to_owned();
    }
    list.iter().map(|c| format!("{}={}", c.name, c.doc_count)).collect::<Vec<_>>().join(" ")
}

fn state(node: &v1::NodeStats) -> &'static str {
    crate::nodes::state_name(node.state)
}

/// The tables.
pub fn text(stats: &v1::StatsResponse) -> String {
    let mut out = String::new();
    let mut nodes = Table::new(vec![
        Column::left("NODE"),
        Column::left("SHARD"),
        Column::left("STATE"),
        Column::right("DOCS"),
        Column::right("INDEX"),
        Column::right("GEN"),
        Column::right("APPLIED"),
        Column::left("COLLECTIONS"),
    ]);
    for node in &stats.nodes {
        nodes.push(vec![
            node.name.clone(),
            node.shard.clone(),
            state(node).to_owned(),
            node.docs.to_string(),
            bytes(node.index_bytes),
            node.generation.to_string(),
            node.applied_seq.to_string(),
            collections(&node.collections),
        ]);
    }
    let _ = write!(out, "{}", nodes.render());
    let mut groups = Table::new(vec![
        Column::left("SHARD GROUP"),
        Column::right("DOCS"),
        Column::left("COUNTED FROM"),
        Column::left("REPLICAS"),
        Column::left("COLLECTIONS"),
    ]);
    for group in &stats.groups {
        groups.push(vec![
            group.shard.clone(),
            group.docs.to_string(),
            group.counted_from.clone(),
            group.replicas.join(","),
            collections(&group.collections),
        ]);
    }
    let _ = write!(out, "\n{}", groups.render());
    let _ = writeln!(
        out,
        "\n{} documents in {} shard groups ({}); indexes take {} over {} nodes",
        stats.total_docs,
        stats.groups.len(),
        collections(&stats.collections),
        bytes(stats.total_index_bytes),
        stats.nodes.len()
    );
    out
}

/// The JSON form.
pub fn to_json(stats: &v1::StatsResponse) -> Value {
    let collections = |list: &[v1::CollectionStats]| -> Value {
        list.iter().map(|c| (c.name.clone(), json!(c.doc_count))).collect::<serde_json::Map<_, _>>().into()
    };
    json!({
        "nodes": stats.nodes.iter().map(|n| json!({
            "name": n.name, "shard": n.shard, "state": state(n), "docs": n.docs,
            "index_bytes": n.index_bytes, "generation": n.generation, "applied_seq": n.applied_seq,
            "collections": collections(&n.collections),
        })).collect::<Vec<_>>(),
        "groups": stats.groups.iter().map(|g| json!({
            "shard": g.shard, "docs": g.docs, "counted_from": g.counted_from, "replicas": g.replicas,
            "collections": collections(&g.collections),
        })).collect::<Vec<_>>(),
        "collections": collections(&stats.collections),
        "total_docs": stats.total_docs,
        "total_index_bytes": stats.total_index_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> v1::StatsResponse {
        let docs = |n| vec![v1::CollectionStats { name: "docs".into(), doc_count: n }];
        v1::StatsResponse {
            nodes: vec![
                v1::NodeStats {
                    name: "a-1".into(),
                    shard: "a".into(),
                    state: v1::NodeState::Up.into(),
                    generation: 3,
                    applied_seq: 3,
                    index_bytes: 2_500_000,
                    collections: docs(12),
                    docs: 12,
                },
                v1::NodeStats {
                    name: "a-2".into(),
                    shard: "a".into(),
                    state: v1::NodeState::Down.into(),
                    index_bytes: 900,
                    ..Default::default()
                },
            ],
            groups: vec![v1::GroupStats {
                shard: "a".into(),
                replicas: vec!["a-1".into(), "a-2".into()],
                counted_from: "a-1".into(),
                collections: docs(12),
                docs: 12,
            }],
            collections: docs(12),
            total_docs: 12,
            total_index_bytes: 2_500_900,
        }
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(bytes(900), "900 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(2_500_000), "2.4 MiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }

    #[test]
    fn tables_and_json_show_nodes_groups_and_totals() {
        let text = text(&stats());
        assert!(text.contains("a-1") && text.contains("2.4 MiB") && text.contains("docs=12"), "{text}");
        assert!(text.contains("down"), "{text}");
        assert!(text.contains("12 documents in 1 shard groups (docs=12); indexes take 2.4 MiB over 2 nodes"), "{text}");
        let value = to_json(&stats());
        assert_eq!(value["total_docs"], 12);
        assert_eq!(value["groups"][0]["counted_from"], "a-1");
        assert_eq!(value["nodes"][0]["collections"]["docs"], 12);
    }
}
