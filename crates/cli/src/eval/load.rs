//! Loading an evaluation's documents through the master: every document into the baseline
//! node's shard group, each shard's share into its node's group, in batches of `--batch`
//! (`IngestDocuments` naming the node). Each group gets its batches one at a time, in order;
//! groups load side by side, at most [`MAX_IN_FLIGHT`] batches at once. A progress bar on a
//! terminal (stderr), nothing otherwise.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ragmesh_index::Document;
use ragmesh_proto::v1;
use tokio::sync::Semaphore;

use super::Layout;
use crate::client::Master;
use crate::ingest::{DEFAULT_BATCH_TIMEOUT, to_wire};

/// Batches in flight at once, over every group.
pub const MAX_IN_FLIGHT: usize = 3;

/// The documents of each target node: the baseline first, then every shard in order.
pub fn shares<'d>(layout: &Layout, docs: &'d [Document], assignment: &[usize]) -> Vec<(String, Vec<&'d Document>)> {
    let mut shares: Vec<(String, Vec<&Document>)> =
        layout.shards.iter().map(|node| (node.clone(), Vec::new())).collect();
    for (doc, &shard) in docs.iter().zip(assignment) {
        if let Some((_, share)) = shares.get_mut(shard) {
            share.push(doc);
        }
    }
    let mut all = vec![(layout.baseline.clone(), docs.iter().collect())];
    all.extend(shares);
    all
}

/// Writes every share, failing at the first batch that fails (naming node and batch).
pub async fn load_all(
    master: &Master,
    layout: &Layout,
    docs: &[Document],
    assignment: &[usize],
    batch: usize,
) -> anyhow::Result<()> {
    let shares = shares(layout, docs, assignment);
    let total: usize = shares.iter().map(|(_, share)| share.len()).sum();
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("loading [{bar:30}] {pos}/{len} documents  ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let started = Instant::now();
    let permits = Semaphore::new(MAX_IN_FLIGHT);
    let batch = batch.max(1);
    let result = try_join_all(shares.iter().map(|(node, share)| {
        let (permits, bar) = (&permits, &bar);
        async move {
            for (i, chunk) in share.chunks(batch).enumerate() {
                let documents: Vec<v1::Document> = chunk.iter().map(|d| to_wire((*d).clone())).collect();
                let count = documents.len();
                let request = v1::IngestDocumentsRequest { node: node.clone(), documents, shard: String::new() };
                let _permit = permits.acquire().await.map_err(|err| anyhow::anyhow!("ingest stopped: {err}"))?;
                master.ingest(request, DEFAULT_BATCH_TIMEOUT).await.map_err(|status| {
                    master.describe(&format!("ingest of batch {} ({count} documents) into {node}", i + 1), &status)
                })?;
                bar.inc(count as u64);
            }
            Ok::<(), anyhow::Error>(())
        }
    }))
    .await;
    bar.finish_and_clear();
    result?;
    eprintln!("loaded {total} documents into {} nodes in {}", shares.len(), seconds(started.elapsed()));
    Ok(())
}

fn seconds(elapsed: Duration) -> String {
    format!("{:.1} s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_gets_everything_and_each_shard_its_share() {
        let docs: Vec<Document> = (0..5)
            .map(|i| Document {
                id: format!("d{i}"),
                collection: "c".into(),
                title: String::new(),
                body: String::new(),
                metadata: Default::default(),
                acl: Default::default(),
            })
            .collect();
        let layout = Layout { baseline: "base".into(), shards: vec!["s1".into(), "s2".into()] };
        let shares = shares(&layout, &docs, &[0, 1, 1, 0, 1]);
        let ids = |share: &[&Document]| share.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        assert_eq!(shares.len(), 3);
        assert_eq!(
            (shares[0].0.as_str(), ids(&shares[0].1)),
            ("base", vec!["d0", "d1", "d2", "d3", "d4"].into_iter().map(String::from).collect())
        );
        assert_eq!(ids(&shares[1].1), ["d0", "d3"]);
        assert_eq!(ids(&shares[2].1), ["d1", "d2", "d4"]);
    }
}
