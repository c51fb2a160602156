//! Helpers shared by the benchmark binaries: run a closed-loop load at a fixed concurrency for a
//! fixed time, latency percentiles, CPU time from /proc, settings from the environment.

#![allow(dead_code, unreachable_pub)] // each bench uses part of this module

use std::future::Future;
use std::time::{Duration, Instant};

/// A duration in seconds from environment variable `name` (fractions allowed), else `default`.
pub fn env_secs(name: &str, default: f64) -> Duration {
    let secs = std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| *s > 0.0).unwrap_or(default);
    Duration::from_secs_f64(secs)
}

/// A count from environment variable `name`, else `default`.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(default)
}

/// A comma-separated list of positive counts from environment variable `name` (e.g.
/// `CONCURRENCY=1,16`), else `default` (also when it names none).
pub fn env_counts(name: &str, default: &[usize]) -> Vec<usize> {
    let listed: Vec<usize> = std::env::var(name)
        .map(|list| list.split(',').filter_map(|c| c.trim().parse().ok()).filter(|c| *c > 0).collect())
        .unwrap_or_default();
    if listed.is_empty() { default.to_vec() } else { listed }
}

/// What one operation of a load run reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tags {
    /// The operation failed (or its answer was incomplete).
    pub failed: bool,
    /// Free counters a bench interprets (which replica answered, hedged, ...).
    pub a: bool,
    /// Second free counter.
    pub b: bool,
}

/// Latencies and counters of one load run.
#[derive(Debug, Default, Clone)]
pub struct Run {
    /// Latency of every successful operation, sorted.
    pub latencies: Vec<Duration>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Operations that failed.
    pub failed: usize,
    /// Operations tagged `a`.
    pub a: usize,
    /// Operations tagged `b`.
    pub b: usize,
}

impl Run {
    /// Operations that succeeded.
    pub fn count(&self) -> usize {
        self.latencies.len()
    }

    /// The `q` quantile (0..=1) in milliseconds, nearest rank.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1].as_secs_f64() * 1000.0
    }

    /// p50 in ms.
    pub fn p50(&self) -> f64 {
        self.quantile_ms(0.50)
    }

    /// p99 in ms.
    pub fn p99(&self) -> f64 {
        self.quantile_ms(0.99)
    }

    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        self.count() as f64 / self.elapsed.as_secs_f64()
    }

    /// Merges another run of the same scenario (rounds interleaved with other scenarios).
    pub fn merge(&mut self, other: Run) {
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self.elapsed += other.elapsed;
        self.failed += other.failed;
        self.a += other.a;
        self.b += other.b;
    }
}

/// Runs `concurrency` workers, each calling `op` in a loop until `duration` has passed (an
/// operation started before then is waited for), and collects every latency. `op` gets the
/// worker index and the operation number within the worker.
pub async fn run_load<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Run
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Tags> + Send,
{
    run_load_prepared(concurrency, duration, |_, _| (), move |worker, n, ()| op(worker, n)).await
}

/// [`run_load`] with an untimed step before each operation: `prepare` (worker, operation
/// number) makes what `op` then takes, and only `op` is timed (e.g. a signature the system
/// under test would have made before its own clock started).
pub async fn run_load_prepared<P, Prep, F, Fut>(concurrency: usize, duration: Duration, prepare: Prep, op: F) -> Run
where
    P: Send,
    Prep: Fn(usize, usize) -> P + Clone + Send + 'static,
    F: Fn(usize, usize, P) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Tags> + Send,
{
    let started = Instant::now();
    let end = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (prepare, op) = (prepare.clone(), op.clone());
        workers.spawn(async move {
            let mut run = Run::default();
            let mut n = 0;
            while Instant::now() < end {
                let prepared = prepare(worker, n);
                let begun = Instant::now();
                let tags = op(worker, n, prepared).await;
                // A failure is counted, not timed: a fast refusal would flatter the percentiles.
                if !tags.failed {
                    run.latencies.push(begun.elapsed());
                }
                run.failed += usize::from(tags.failed);
                run.a += usize::from(tags.a);
                run.b += usize::from(tags.b);
                n += 1;
            }
            run
        });
    }
    let mut total = Run::default();
    while let Some(run) = workers.join_next().await {
        total.merge(run.expect("load worker panicked"));
    }
    total.elapsed = started.elapsed();
    total
}

/// A `kB` field of /proc/`pid`/status (`VmRSS` resident now, `VmHWM` peak resident, `RssAnon`,
/// `RssFile`, ...), 0 when the process or the field is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field).and_then(|rest| rest.strip_prefix(':')))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// Clock ticks per second of /proc's utime and stime (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime in ticks from the text of a /proc `stat` file.
fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After "pid (comm)": state is field 3, utime 14, stime 15 (1-based), so 11 and 12 here.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks (user + system) used so far by process `pid`, its exited threads included.
pub fn pid_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat_ticks(&stat).map_or(0, |(_, ticks)| ticks)
}

/// CPU ticks (user + system) used so far by the whole process.
pub fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat_ticks(&stat).map_or(0, |(_, ticks)| ticks)
}

/// CPU ticks (user + system) used so far by the live threads whose name starts with `prefix`.
pub fn thread_ticks(prefix: &str) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        if let Some((comm, ticks)) = stat_ticks(&stat)
            && comm.starts_with(prefix)
        {
            total += ticks;
        }
    }
    total
}

/// CPU time in nanoseconds used so far by the live threads whose name starts with `prefix`,
/// from /proc/self/task/*/schedstat (nanosecond precision, where `stat` counts 10 ms ticks).
pub fn thread_cpu_nanos(prefix: &str) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let schedstat = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += schedstat.split_whitespace().next().and_then(|ns| ns.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// The NPL collection (../shared/data/vaswani) parsed, with its topics' titles in lower case as
/// queries; `None` when it is absent (a bench then says so and generates a corpus).
pub fn npl() -> Option<(Vec<ragmesh_index::Document>, Vec<String>)> {
    let dir = ragmesh_test_util::vaswani_dir()?;
    let text = std::fs::read_to_string(dir.join("doc-text.trec")).expect("read the NPL documents");
    let docs = ragmesh_index::ingest::parse_trec(&text, "npl").expect("parse the NPL documents");
    let topics = ragmesh_eval::topics::read_topics_file(&dir.join("query-text.trec")).expect("read the NPL topics");
    Some((docs, topics.into_iter().map(|t| t.title.to_lowercase()).collect()))
}

/// The median of `values` (NaN when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 }
}

/// Formats a ratio, or "-" when it is not a number.
pub fn ratio(numerator: f64, denominator: f64) -> String {
    let value = numerator / denominator;
    if value.is_finite() { format!("{value:.2}x") } else { "-".to_owned() }
}

/// Waits `duration` of load to pass without recording it (warm-up), reporting progress.
pub async fn warm_up<F, Fut>(what: &str, concurrency: usize, duration: Duration, op: F) -> Run
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Tags> + Send,
{
    eprintln!("warming up {what} for {:.0} s at concurrency {concurrency}", duration.as_secs_f64());
    run_load(concurrency, duration, op).await
}

/// Prints the first failure of a bench (later ones are only counted).
pub fn report_first_failure(what: &str, error: &dyn std::fmt::Display) {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !REPORTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprintln!("first failure ({what}): {error}");
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS`), 0 when it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}
