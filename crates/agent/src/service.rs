//! The agent's data plane (`AgentService`): upsert, delete and BM25 search over the local index.
//! Index calls are blocking (tantivy), so they run on the blocking pool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use ragmesh_index::{Acl, DocRef, Document, DocumentIndex, SearchQuery, SubjectRef, Viewer};
use ragmesh_proto::v1::{self, agent_service_server::AgentService};
use tonic::{Request, Response, Status};

use crate::error::AgentError;

/// State shared by the agent's service and its master link.
#[derive(Debug, Clone)]
pub struct AgentState {
    /// Node name.
    pub name: String,
    /// The index, once open.
    pub index: Arc<OnceLock<Arc<DocumentIndex>>>,
    /// Requests being served now (reported in heartbeats).
    pub in_flight: Arc<AtomicU32>,
}

impl AgentState {
    fn index(&self) -> Result<Arc<DocumentIndex>, AgentError> {
        self.index.get().cloned().ok_or(AgentError::NotReady)
    }

    /// Runs `work` on the index in the blocking pool, counting it as in flight.
    async fn with_index<T: Send + 'static>(
        &self,
        work: impl FnOnce(&DocumentIndex) -> Result<T, ragmesh_index::IndexError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let index = self.index()?;
        let _guard = InFlight::enter(&self.in_flight);
        tokio::task::spawn_blocking(move || work(&index))
            .await
            .map_err(|e| AgentError::Task(e.to_string()))?
            .map_err(AgentError::from)
    }
}

/// Counts one request in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicU32);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The `AgentService` implementation.
#[derive(Debug, Clone)]
pub struct AgentApi(pub AgentState);

fn document_from_wire(doc: v1::Document) -> Document {
    let acl = doc.acl.unwrap_or_default();
    Document {
        id: doc.id,
        collection: doc.collection,
        title: doc.title,
        body: doc.body,
        metadata: doc.metadata.into_iter().collect::<BTreeMap<_, _>>(),
        acl: Acl {
            public: acl.public,
            tenants: acl.tenants.into_iter().collect(),
            subjects: acl.subjects.into_iter().map(|s| SubjectRef { tenant: s.tenant, subject: s.subject }).collect(),
        },
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    async fn upsert_documents(
        &self,
        request: Request<v1::UpsertDocumentsRequest>,
    ) -> Result<Response<v1::UpsertDocumentsResponse>, Status> {
        let docs: Vec<Document> = request.into_inner().documents.into_iter().map(document_from_wire).collect();
        let count = u32::try_from(docs.len()).unwrap_or(u32::MAX);
        let generation = self.0.with_index(move |index| index.upsert(docs)).await?;
        tracing::info!(documents = count, generation, "documents upserted");
        Ok(Response::new(v1::UpsertDocumentsResponse { upserted: count, generation }))
    }

    async fn delete_documents(
        &self,
        request: Request<v1::DeleteDocumentsRequest>,
    ) -> Result<Response<v1::DeleteDocumentsResponse>, Status> {
        let refs: Vec<DocRef> =
            request.into_inner().refs.into_iter().map(|r| DocRef { collection: r.collection, id: r.id }).collect();
        let count = u32::try_from(refs.len()).unwrap_or(u32::MAX);
        let generation = self.0.with_index(move |index| index.delete(refs)).await?;
        tracing::info!(documents = count, generation, "documents deleted");
        Ok(Response::new(v1::DeleteDocumentsResponse { deleted: count, generation }))
    }

    async fn node_search(
        &self,
        request: Request<v1::NodeSearchRequest>,
    ) -> Result<Response<v1::NodeSearchResponse>, Status> {
        let req = request.into_inner();
        let query = SearchQuery {
            query: req.query,
            collections: req.collections,
            limit: req.limit as usize,
            min_score: req.min_score as f32,
            // Every caller today is a certificate-authenticated mesh member (the master). Per-caller
            // viewers arrive with the signed request context of the access-token work (issue 3).
            viewer: Viewer::Unrestricted,
        };
        let results = self.0.with_index(move |index| index.search(&query)).await?;
        let node = self.0.name.clone();
        let hits = results
            .hits
            .into_iter()
            .enumerate()
            .map(|(i, hit)| v1::Hit {
                node: node.clone(),
                doc_id: hit.id,
                collection: hit.collection,
                title: hit.title,
                snippet: hit.snippet,
                score: f64::from(hit.score),
                node_score: f64::from(hit.score),
                node_rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                also_on: Vec::new(),
                metadata: hit.metadata.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(v1::NodeSearchResponse {
            hits,
            generation: results.generation,
            total_matches: results.total_matches,
        }))
    }
}
