//! `ragmeshctl top`: a live per-node view of the mesh (state, requests/s, p50/p99 latency,
//! errors/s, breaker, heartbeat lag), redrawn in place on a terminal, printed as plain tables
//! otherwise; `--once` prints one view and exits.
//!
//! Where the numbers come from: membership, breaker and heartbeat from `ListNodes` (the
//! authoritative view, over mTLS with the admin capability); traffic from the master's
//! `/metrics` (`--metrics`, the master's `--metrics-listen`): the per-node series
//! `ragmesh_node_client_calls_total{node,outcome}` and the histogram
//! `ragmesh_node_client_call_seconds`, read twice one interval apart, so the rates and
//! quantiles cover that interval (as PromQL's `rate` and `histogram_quantile` would). No new
//! RPC field: the histograms already exist as series, and a gRPC copy would be a second
//! source of the same numbers. Without `--metrics` the traffic columns show `-`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use ragmesh_proto::v1;

use crate::args::TopArgs;
use crate::client::Master;
use crate::nodes::{breaker_name, state_name};
use crate::render::{Column, Table};

/// How long one scrape of `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One sample of a scrape: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `ragmesh_node_client_calls_total`.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses Prometheus text (0.0.4 or OpenMetrics): comments skipped, label values unescaped,
/// lines that do not parse ignored (a view, not a validator).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(sample) = parse_line(line) {
            samples.push(sample);
        }
    }
    samples
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut body) = rest.strip_prefix('{') {
        loop {
            body = body.trim_start_matches([',', ' ']);
            if let Some(after) = body.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = body.split_once("=\"")?;
            let mut value = String::new();
            let mut chars = after_key.char_indices();
            let end = loop {
                let (at, c) = chars.next()?;
                match c {
                    '\\' => {
                        let (_, escaped) = chars.next()?;
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                    '"' => break at,
                    other => value.push(other),
                }
            };
            labels.insert(key.trim().to_owned(), value);
            body = &after_key[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// Per-node traffic over an interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Traffic {
    /// Calls per second.
    pub requests_per_second: f64,
    /// Failed calls (timeout, unavailable, error, breaker_open) per second.
    pub errors_per_second: f64,
    /// Median latency, seconds (`None` without calls in the interval).
    pub p50: Option<f64>,
    /// 99th percentile latency, seconds.
    pub p99: Option<f64>,
}

/// Cumulative per-node counters of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
struct Totals {
    calls: f64,
    errors: f64,
    /// `le` upper bound to cumulative count.
    buckets: Vec<(f64, f64)>,
}

fn totals(samples: &[Sample]) -> BTreeMap<String, Totals> {
    let mut nodes: BTreeMap<String, Totals> = BTreeMap::new();
    for sample in samples {
        let Some(node) = sample.labels.get("node") else { continue };
        match sample.name.as_str() {
            "ragmesh_node_client_calls_total" => {
                let outcome = sample.labels.get("outcome").map_or("", String::as_str);
                // An abandoned copy (a hedge lost, the caller left) is neither a request served
                // nor an error of the node.
                if outcome == "cancelled" {
                    continue;
                }
                let totals = nodes.entry(node.clone()).or_default();
                totals.calls += sample.value;
                if outcome != "ok" {
                    totals.errors += sample.value;
                }
            }
            "ragmesh_node_client_call_seconds_bucket" => {
                let Some(le) = sample.labels.get("le").and_then(|le| parse_le(le)) else { continue };
                nodes.entry(node.clone()).or_default().buckets.push((le, sample.value));
            }
            _ => {}
        }
    }
    for totals in nodes.values_mut() {
        totals.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    nodes
}

fn parse_le(le: &str) -> Option<f64> {
    if le == "+Inf" { Some(f64::INFINITY) } else { le.parse().ok() }
}

/// The traffic of each node between two scrapes `seconds` apart.
pub fn traffic(before: &[Sample], after: &[Sample], seconds: f64) -> BTreeMap<String, Traffic> {
    let before = totals(before);
    let seconds = seconds.max(f64::EPSILON);
    let mut out = BTreeMap::new();
    for (node, now) in totals(after) {
        let was = before.get(&node).cloned().unwrap_or_default();
        let mut buckets = Vec::with_capacity(now.buckets.len());
        for (le, count) in &now.buckets {
            let earlier = was.buckets.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c)| *c);
            buckets.push((*le, (count - earlier).max(0.0)));
        }
        let traffic = Traffic {
            requests_per_second: (now.calls - was.calls).max(0.0) / seconds,
            errors_per_second: (now.errors - was.errors).max(0.0) / seconds,
            p50: quantile(0.5, &buckets),
            p99: quantile(0.99, &buckets),
        };
        out.insert(node, traffic);
    }
    out
}

/// The `q` quantile of a cumulative histogram (`le`, count) sorted by `le`, by linear
/// interpolation inside the bucket (Prometheus's `histogram_quantile`); `None` when empty.
/// A quantile in the `+Inf` bucket is the highest finite bound.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower_bound);
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(lower_bound + (le - lower_bound) * (rank - lower_count) / in_bucket);
        }
        lower_bound = le;
        lower_count = count;
    }
    Some(lower_bound)
}

/// One row of the view.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Node name.
    pub node: String,
    /// Liveness state.
    pub state: String,
    /// Traffic over the interval, when the master's metrics were read.
    pub traffic: Option<Traffic>,
    /// Breaker state.
    pub breaker: String,
    /// Time since the last heartbeat.
    pub heartbeat_lag: Option<Duration>,
}

/// The rows for `nodes`, with `traffic` when there is one (nodes without calls show zero).
pub fn rows(nodes: &[v1::NodeInfo], traffic: Option<&BTreeMap<String, Traffic>>, now: SystemTime) -> Vec<Row> {
    let mut rows = Vec::with_capacity(nodes.len());
    for node in nodes {
        let heartbeat_lag = node
            .last_heartbeat
            .as_ref()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .map(|at| now.duration_since(at).unwrap_or_default());
        rows.push(Row {
            node: node.name.clone(),
            state: state_name(node.state).to_owned(),
            traffic: traffic.map(|t| t.get(&node.name).cloned().unwrap_or_default()),
            breaker: breaker_name(node.breaker.as_ref()).to_owned(),
            heartbeat_lag,
        });
    }
    rows.sort_by(|a, b| a.node.cmp(&b.node));
    rows
}

fn millis(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) if s < 0.01 => format!("{:.2} ms", s * 1000.0),
        Some(s) => format!("{:.1} ms", s * 1000.0),
        None => "-".to_owned(),
    }
}

/// The view as a plain table, with a heading saying what the interval was.
pub fn render(rows: &[Row], interval: Duration, metrics: bool) -> String {
    let mut table = Table::new(vec![
        Column::left("NODE"),
        Column::left("STATE"),
        Column::right("REQ/S"),
        Column::right("P50"),
        Column::right("P99"),
        Column::right("ERR/S"),
        Column::left("BREAKER"),
        Column::right("HB LAG"),
    ]);
    for row in rows {
        let (rps, p50, p99, errors) = match &row.traffic {
            Some(t) => (
                format!("{:.1}", t.requests_per_second),
                millis(t.p50),
                millis(t.p99),
                format!("{:.1}", t.errors_per_second),
            ),
            None => ("-".to_owned(), "-".to_owned(), "-".to_owned(), "-".to_owned()),
        };
        let lag = row.heartbeat_lag.map_or("-".to_owned(), |lag| format!("{:.1}s", lag.as_secs_f64()));
        table.push(vec![row.node.clone(), row.state.clone(), rps, p50, p99, errors, row.breaker.clone(), lag]);
    }
    let mut out = String::new();
    let source = if metrics {
        format!("traffic of the master's calls to each node over the last {:.1} s", interval.as_secs_f64())
    } else {
        "no traffic columns: pass --metrics HOST:PORT (the master's --metrics-listen)".to_owned()
    };
    let _ = writeln!(out, "ragmesh top: {} nodes; {source}", rows.len());
    out.push_str(&table.render());
    out
}

/// `GET http://ADDR/metrics` with hyper's HTTP/1.1 client (hyper is already here through tonic).
pub async fn scrape(addr: &str) -> anyhow::Result<String> {
    let fetch = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to the master's metrics at {addr} (is --metrics-listen set?)"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get("/metrics")
            .header(hyper::header::HOST, addr)
            .body(Empty::<Bytes>::new())
            .context("metrics request")?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        anyhow::ensure!(status.is_success(), "GET http://{addr}/metrics answered {status}");
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .with_context(|| format!("the master's metrics at {addr} did not answer within {SCRAPE_TIMEOUT:?}"))?
}

/// Runs `ragmeshctl top`.
pub async fn run(master: &Master, args: &TopArgs) -> anyhow::Result<()> {
    let interval = Duration::from_millis(args.interval_ms.into());
    let live = !args.once && crate::render::stdout_supports_ansi();
    let mut before = match &args.metrics {
        Some(addr) => Some((parse_samples(&scrape(addr).await?), tokio::time::Instant::now())),
        None => None,
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let listed = master.list_nodes_and_groups().await?;
        let traffic = match (&args.metrics, &before) {
            (Some(addr), Some((earlier, at))) => {
                let now = parse_samples(&scrape(addr).await?);
                let seconds = at.elapsed().as_secs_f64();
                let traffic = traffic(earlier, &now, seconds);
                before = Some((now, tokio::time::Instant::now()));
                Some(traffic)
            }
            _ => None,
        };
        let view = render(&rows(&listed.nodes, traffic.as_ref(), SystemTime::now()), interval, args.metrics.is_some());
        if live {
            // Home and clear the screen, then draw: the view replaces itself in place.
            print!("\x1b[H\x1b[2J{view}");
        } else {
            println!("{view}");
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        if args.once {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = "# HELP ragmesh_node_client_calls_total Calls.\n\
        # TYPE ragmesh_node_client_calls_total counter\n\
        ragmesh_node_client_calls_total{node=\"agent-1\",outcome=\"ok\"} 10\n\
        ragmesh_node_client_calls_total{node=\"agent-1\",outcome=\"timeout\"} 2\n\
        ragmesh_node_client_calls_total{node=\"agent-1\",outcome=\"cancelled\"} 5\n\
        ragmesh_node_client_call_seconds_bucket{le=\"0.001\",node=\"agent-1\"} 0\n\
        ragmesh_node_client_call_seconds_bucket{node=\"agent-1\",le=\"0.002\"} 6\n\
        ragmesh_node_client_call_seconds_bucket{node=\"agent-1\",le=\"0.004\"} 12\n\
        ragmesh_node_client_call_seconds_bucket{node=\"agent-1\",le=\"+Inf\"} 12\n\
        odd_label{a=\"x\\\"y, z}\"} 1.5\n\
        no_labels 3\n\
        # EOF\n";

    #[test]
    fn parses_labels_escapes_and_infinities() {
        let samples = parse_samples(SCRAPE);
        assert_eq!(samples.len(), 9, "{samples:?}");
        let odd = samples.iter().find(|s| s.name == "odd_label").expect("odd");
        assert_eq!(odd.labels["a"], "x\"y, z}");
        assert_eq!(odd.value, 1.5);
        assert_eq!(samples.iter().find(|s| s.name == "no_labels").expect("plain").value, 3.0);
        let inf = samples.iter().find(|s| s.labels.get("le").map(String::as_str) == Some("+Inf")).expect("+Inf");
        assert_eq!(inf.value, 12.0);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_histogram_quantile() {
        let buckets = [(0.001, 0.0), (0.002, 6.0), (0.004, 12.0), (f64::INFINITY, 12.0)];
        assert_eq!(quantile(0.5, &buckets), Some(0.002), "rank 6 ends the second bucket");
        let p75 = quantile(0.75, &buckets).expect("p75");
        assert!((p75 - 0.003).abs() < 1e-12, "halfway into (2 ms, 4 ms]: {p75}");
        assert_eq!(quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]), None, "no calls, no quantile");
        assert_eq!(quantile(0.99, &[(0.001, 0.0), (f64::INFINITY, 4.0)]), Some(0.001), "+Inf: highest bound");
    }

    #[test]
    fn traffic_is_the_difference_over_the_interval_without_cancelled_copies() {
        let before = parse_samples(SCRAPE);
        let after = parse_samples(
            &SCRAPE
                .replace("outcome=\"ok\"} 10", "outcome=\"ok\"} 30")
                .replace("outcome=\"timeout\"} 2", "outcome=\"timeout\"} 4")
                .replace("outcome=\"cancelled\"} 5", "outcome=\"cancelled\"} 50")
                .replace("le=\"0.004\"} 12", "le=\"0.004\"} 34")
                .replace("le=\"+Inf\"} 12", "le=\"+Inf\"} 34"),
        );
        let traffic = traffic(&before, &after, 2.0);
        let node = &traffic["agent-1"];
        assert_eq!(node.requests_per_second, 11.0, "22 calls in 2 s");
        assert_eq!(node.errors_per_second, 1.0, "2 timeouts in 2 s");
        let p50 = node.p50.expect("p50");
        assert!(p50 > 0.002 && p50 <= 0.004, "every new call was in (2 ms, 4 ms]: {p50}");
    }

    #[test]
    fn the_view_shows_dashes_without_metrics_and_every_column_with_them() {
        let row = Row {
            node: "agent-1".into(),
            state: "up".into(),
            traffic: None,
            breaker: "closed".into(),
            heartbeat_lag: Some(Duration::from_millis(300)),
        };
        let text = render(std::slice::from_ref(&row), Duration::from_secs(2), false);
        assert!(text.contains("pass --metrics"), "{text}");
        assert!(text.contains("agent-1") && text.contains("0.3s") && text.contains(" - "), "{text}");
        let traffic = Traffic { requests_per_second: 12.5, errors_per_second: 0.5, p50: Some(0.0012), p99: Some(0.25) };
        let text = render(&[Row { traffic: Some(traffic), ..row }], Duration::from_secs(2), true);
        for cell in ["REQ/S", "P99", "HB LAG", "12.5", "1.20 ms", "250.0 ms", "0.5", "closed"] {
            assert!(text.contains(cell), "{cell} missing: {text}");
        }
        assert!(!text.contains('\x1b'), "the rendering itself is plain text");
    }
}
