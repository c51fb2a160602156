//! The agent's own Prometheus series, read at scrape time from its index: documents, generation
//! and segments (`ragmesh_index_documents`, `ragmesh_index_generation`,
//! `ragmesh_index_segments`). Its request metrics are
//! the gRPC server series (`ragmesh_stack::metrics`), its certificate's expiry is
//! `ragmesh_tls_certificate_expiry_seconds`.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use ragmesh_index::DocumentIndex;
use ragmesh_stack::metrics::Gauges;

/// Reads the index (once open) at each scrape.
#[derive(Debug)]
pub struct IndexCollector {
    /// The agent's index, set once it is open.
    pub index: Arc<OnceLock<Arc<DocumentIndex>>>,
}

impl Collector for IndexCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(index) = self.index.get() else { return Ok(()) };
        let series = [
            ("ragmesh_index_documents", "Documents in this agent's index", index.doc_count() as f64),
            (
                "ragmesh_index_generation",
                "Generation of this agent's index (one per commit)",
                index.generation() as f64,
            ),
            (
                "ragmesh_index_segments",
                "Segments of this agent's index that searches go through (merged when writes stop)",
                index.segment_count() as f64,
            ),
        ];
        for (name, help, value) in series {
            let gauge = Gauges::default();
            gauge.set(Vec::new(), value);
            gauge.encode(&mut encoder, name, help)?;
        }
        Ok(())
    }
}
