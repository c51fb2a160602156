//! A closed-loop search load for chaos tests: `concurrency` tasks each send one search at a
//! time through the master until stopped, and every search is recorded with the phase it
//! started in, how long it took and how each shard group answered. [`summarize`] turns the
//! samples of a phase into counts and latency percentiles.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ragmesh_proto::v1::{self, master_service_client::MasterServiceClient};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::Channel;

/// Longest a load task waits for one search (a bound of the test, far above any deadline the
/// tests set; a search that hits it is recorded as failed).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);

/// How one shard group answered one search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupAnswer {
    /// Shard group.
    pub shard: String,
    /// Its outcome status.
    pub status: i32,
    /// The replica whose answer was used.
    pub answered_by: String,
    /// Attempts made, as `node:kind:status`.
    pub attempts: Vec<String>,
}

/// One search of the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Phase current when it started.
    pub phase: String,
    /// When it started.
    pub started: Instant,
    /// How long it took, seen by the client.
    pub took: Duration,
    /// The RPC error, when the search failed.
    pub error: Option<String>,
    /// How each group answered (empty when the search failed).
    pub groups: Vec<GroupAnswer>,
    /// Hits returned.
    pub hits: usize,
}

impl Sample {
    /// Whether the search got an answer from every one of `groups` shard groups.
    pub fn complete(&self, groups: usize) -> bool {
        self.error.is_none()
            && self.groups.len() == groups
            && self.groups.iter().all(|g| g.status == v1::OutcomeStatus::Ok as i32)
    }

    /// Whether the search is incomplete only because groups waited on `node` alone: every group
    /// without an answer made all its attempts (first, hedge) to `node`. The shape of a read
    /// stuck on a frozen or partitioned replica that no hedge or retry got around.
    pub fn stuck_on(&self, node: &str) -> bool {
        let node_prefix = format!("{node}:");
        let unanswered: Vec<&GroupAnswer> =
            self.groups.iter().filter(|g| g.status != v1::OutcomeStatus::Ok as i32).collect();
        self.error.is_none()
            && !unanswered.is_empty()
            && unanswered
                .iter()
                .all(|g| !g.attempts.is_empty() && g.attempts.iter().all(|a| a.starts_with(&node_prefix)))
    }

    /// Whether `node` answered for one of the groups.
    pub fn answered_by(&self, node: &str) -> bool {
        self.groups.iter().any(|g| g.answered_by == node)
    }
}

/// A running load; [`Load::stop`] ends it.
#[derive(Debug)]
pub struct Load {
    phase: watch::Sender<String>,
    samples: Arc<Mutex<Vec<Sample>>>,
    tasks: JoinSet<()>,
}

impl Load {
    /// Starts `concurrency` tasks sending `request` through `client` back to back, in phase
    /// `phase`.
    pub fn start(
        client: MasterServiceClient<Channel>,
        request: v1::SearchRequest,
        concurrency: usize,
        phase: &str,
    ) -> Load {
        let (phase_tx, phase_rx) = watch::channel(phase.to_owned());
        let samples = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = JoinSet::new();
        for _ in 0..concurrency {
            let mut client = client.clone();
            let request = request.clone();
            let mut phase = phase_rx.clone();
            let samples = samples.clone();
            tasks.spawn(async move {
                // The sender is dropped by `stop`, which ends every task after its current search.
                while phase.has_changed().is_ok() {
                    let current = phase.borrow_and_update().clone();
                    let started = Instant::now();
                    let result = tokio::time::timeout(CLIENT_TIMEOUT, client.search(request.clone())).await;
                    let took = started.elapsed();
                    let sample = match result {
                        Err(_) => failed(current, started, took, format!("no answer within {CLIENT_TIMEOUT:?}")),
                        Ok(Err(status)) => failed(current, started, took, format!("{status:?}")),
                        Ok(Ok(response)) => answered(current, started, took, &response.into_inner()),
                    };
                    lock(&samples).push(sample);
                }
            });
        }
        Load { phase: phase_tx, samples, tasks }
    }

    /// Searches started from now on belong to `phase`.
    pub fn phase(&self, phase: &str) {
        self.phase.send_replace(phase.to_owned());
    }

    /// The samples recorded so far.
    pub fn samples(&self) -> Vec<Sample> {
        lock(&self.samples).clone()
    }

    /// Stops the load (each task ends after its current search) and returns every sample.
    pub async fn stop(self) -> Vec<Sample> {
        let Load { phase, samples, tasks } = self;
        drop(phase);
        tasks.join_all().await;
        lock(&samples).clone()
    }
}

fn lock(samples: &Mutex<Vec<Sample>>) -> MutexGuard<'_, Vec<Sample>> {
    samples.lock().unwrap_or_else(|p| p.into_inner())
}

fn failed(phase: String, started: Instant, took: Duration, error: String) -> Sample {
    Sample { phase, started, took, error: Some(error), groups: Vec::new(), hits: 0 }
}

fn answered(phase: String, started: Instant, took: Duration, response: &v1::SearchResponse) -> Sample {
    let groups = response
        .groups
        .iter()
        .map(|g| GroupAnswer {
            shard: g.shard.clone(),
            status: g.status,
            answered_by: g.answered_by.clone(),
            attempts: g
                .attempts
                .iter()
                .map(|a| {
                    let kind = v1::AttemptKind::try_from(a.kind).map(|k| k.as_str_name()).unwrap_or("?");
                    let status = v1::OutcomeStatus::try_from(a.status).map(|s| s.as_str_name()).unwrap_or("?");
                    format!("{}:{kind}:{status}", a.node)
                })
                .collect(),
        })
        .collect();
    Sample { phase, started, took, error: None, groups, hits: response.hits.len() }
}

/// Counts and latencies of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Searches.
    pub count: usize,
    /// Searches that failed (RPC error or no answer).
    pub failed: usize,
    /// Searches answered without every group.
    pub partial: usize,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Slowest search.
    pub max: Duration,
}

/// Summarizes `samples` of a mesh with `groups` shard groups.
pub fn summarize<'a>(samples: impl IntoIterator<Item = &'a Sample>, groups: usize) -> Summary {
    let mut took = Vec::new();
    let (mut failed, mut partial) = (0, 0);
    for sample in samples {
        took.push(sample.took);
        if sample.error.is_some() {
            failed += 1;
        } else if !sample.complete(groups) {
            partial += 1;
        }
    }
    took.sort_unstable();
    Summary {
        count: took.len(),
        failed,
        partial,
        p50: percentile(&took, 0.50),
        p99: percentile(&took, 0.99),
        max: took.last().copied().unwrap_or_default(),
    }
}

/// The `q` quantile (0..=1) of sorted `values` (nearest rank; zero when empty).
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&values, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&values, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
        assert_eq!(percentile(&values[..1], 0.99), Duration::from_millis(1));
    }
}
