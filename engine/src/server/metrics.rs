//! The server's counters and histograms, in Prometheus' text format, and the small HTTP
//! endpoint that serves them (`/metrics`) and a health summary (`/status`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tally_protocol::{CommandResult, Reason, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::ingest::GroupCommitted;

/// Bucket bounds of the latency histograms, in microseconds.
const LATENCY_BUCKETS_US: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];
/// Bucket bounds of the group-commit size histogram, in commands.
const GROUP_BUCKETS: [u64; 10] = [1, 2, 4, 16, 64, 256, 1024, 2048, 4096, 8192];
/// The most bytes of an HTTP request line and headers read before answering.
const MAX_HTTP_REQUEST_BYTES: usize = 4096;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram and the exact sum of what it recorded (Prometheus wants both).
#[derive(Debug)]
pub struct Distribution {
    histogram: Mutex<Histogram<u64>>,
    sum: AtomicU64,
}

impl Distribution {
    /// Values from 1 to `highest`, larger ones counted as `highest`.
    fn new(highest: u64) -> Distribution {
        let histogram = Histogram::new_with_bounds(1, highest, 3).expect("valid bounds");
        Distribution {
            histogram: Mutex::new(histogram),
            sum: AtomicU64::new(0),
        }
    }

    pub fn record(&self, value: u64) {
        let value = value.max(1);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.histogram
            .lock()
            .expect("not poisoned")
            .saturating_record(value);
    }

    pub fn quantile(&self, quantile: f64) -> u64 {
        self.histogram
            .lock()
            .expect("not poisoned")
            .value_at_quantile(quantile)
    }
}

/// An hour, in microseconds: the longest latency told apart.
const LATENCY_HIGHEST_US: u64 = 3_600_000_000;

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    pub connections_open: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub requests: Counter,
    pub commands: Counter,
    pub applied: Counter,
    pub duplicates: Counter,
    rejections: [Counter; Reason::ALL.len()],
    /// Frames refused as malformed (the whole request).
    pub frames_invalid: Counter,
    /// Requests answered `overloaded` (the whole request).
    pub requests_overloaded: Counter,
    /// Commands submitted to the engine and not answered yet.
    pub in_flight_commands: Gauge,
    /// Bytes of request frames being read or processed.
    pub in_flight_frame_bytes: Gauge,
    pub groups: Counter,
    /// Groups applied on their merchants' shards (the others on the engine thread).
    pub groups_sharded: Counter,
    group_commands: Distribution,
    commit_latency_us: Distribution,
    request_latency_us: Distribution,
    pub last_commit_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            connections_open: Gauge::default(),
            connections_accepted: Counter::default(),
            connections_refused: Counter::default(),
            requests: Counter::default(),
            commands: Counter::default(),
            applied: Counter::default(),
            duplicates: Counter::default(),
            rejections: std::array::from_fn(|_| Counter::default()),
            frames_invalid: Counter::default(),
            requests_overloaded: Counter::default(),
            in_flight_commands: Gauge::default(),
            in_flight_frame_bytes: Gauge::default(),
            groups: Counter::default(),
            groups_sharded: Counter::default(),
            group_commands: Distribution::new(1 << 20),
            commit_latency_us: Distribution::new(LATENCY_HIGHEST_US),
            request_latency_us: Distribution::new(LATENCY_HIGHEST_US),
            last_commit_us: AtomicU64::new(0),
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Metrics {
    /// Called on the engine thread for every durable group: must be quick.
    pub fn group_committed(&self, group: &GroupCommitted) {
        self.groups.add(1);
        self.groups_sharded.add(u64::from(group.sharded));
        let commit_us = micros(group.committed);
        self.last_commit_us.store(commit_us, Ordering::Relaxed);
        self.group_commands.record(group.commands as u64);
        self.commit_latency_us.record(commit_us);
    }

    pub fn request_answered(&self, latency: Duration) {
        self.request_latency_us.record(micros(latency));
    }

    pub fn count_results(&self, results: &[impl AsRef<CommandResult>]) {
        for result in results {
            match &result.as_ref().status {
                Status::Applied(_) => self.applied.add(1),
                Status::Duplicate { .. } => self.duplicates.add(1),
                Status::Rejected { reason, .. } => self.rejected(*reason, 1),
            }
        }
    }

    pub fn rejected(&self, reason: Reason, n: u64) {
        let index = Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("every reason is in ALL");
        self.rejections[index].add(n);
    }

    pub fn rejections(&self, reason: Reason) -> u64 {
        let index = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.rejections[index].get()
    }

    /// Everything in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let counters: [(&str, &str, u64); 11] = [
            (
                "tally_connections_accepted_total",
                "QUIC connections accepted",
                self.connections_accepted.get(),
            ),
            (
                "tally_connections_refused_total",
                "QUIC connections refused (limit, certificate, revocation)",
                self.connections_refused.get(),
            ),
            (
                "tally_requests_total",
                "request frames received",
                self.requests.get(),
            ),
            (
                "tally_commands_total",
                "commands received in valid request frames",
                self.commands.get(),
            ),
            (
                "tally_commands_applied_total",
                "commands applied",
                self.applied.get(),
            ),
            (
                "tally_commands_duplicate_total",
                "commands answered with their first result",
                self.duplicates.get(),
            ),
            (
                "tally_frames_invalid_total",
                "request frames refused as malformed",
                self.frames_invalid.get(),
            ),
            (
                "tally_requests_overloaded_total",
                "requests answered overloaded",
                self.requests_overloaded.get(),
            ),
            (
                "tally_groups_committed_total",
                "group commits",
                self.groups.get(),
            ),
            (
                "tally_groups_sharded_total",
                "group commits whose commands were applied on their merchants' shards",
                self.groups_sharded.get(),
            ),
            (
                "tally_uptime_seconds_total",
                "seconds since the server started",
                self.started.elapsed().as_secs(),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges: [(&str, &str, i64); 3] = [
            (
                "tally_connections_open",
                "QUIC connections open",
                self.connections_open.get(),
            ),
            (
                "tally_in_flight_commands",
                "commands queued for or in the engine",
                self.in_flight_commands.get(),
            ),
            (
                "tally_in_flight_frame_bytes",
                "bytes of request frames being read or served",
                self.in_flight_frame_bytes.get(),
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let name = "tally_commands_rejected_total";
        let _ = writeln!(
            out,
            "# HELP {name} commands rejected, by reason\n# TYPE {name} counter"
        );
        for (reason, counter) in Reason::ALL.iter().zip(&self.rejections) {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{}\"}} {}",
                reason.code(),
                counter.get()
            );
        }
        render_histogram(
            &mut out,
            "tally_group_commit_commands",
            "commands per group commit",
            &self.group_commands,
            &GROUP_BUCKETS,
            1.0,
        );
        render_histogram(
            &mut out,
            "tally_commit_latency_seconds",
            "from a group's start until it is durable",
            &self.commit_latency_us,
            &LATENCY_BUCKETS_US,
            1e-6,
        );
        render_histogram(
            &mut out,
            "tally_request_latency_seconds",
            "from a request frame read until its results are ready",
            &self.request_latency_us,
            &LATENCY_BUCKETS_US,
            1e-6,
        );
        out
    }

    /// A short health summary for `tally status`.
    pub fn status(&self) -> String {
        let (commit, request) = (&self.commit_latency_us, &self.request_latency_us);
        format!(
            "status: serving\nuptime_s: {}\nconnections_open: {}\nrequests: {}\ncommands: {}\napplied: {}\nduplicates: {}\nrejected: {}\noverloaded_requests: {}\ninvalid_frames: {}\nin_flight_commands: {}\ngroups_committed: {}\ncommit_latency_us_p50: {}\ncommit_latency_us_p99: {}\nrequest_latency_us_p99: {}\n",
            self.started.elapsed().as_secs(),
            self.connections_open.get(),
            self.requests.get(),
            self.commands.get(),
            self.applied.get(),
            self.duplicates.get(),
            self.rejections.iter().map(Counter::get).sum::<u64>(),
            self.requests_overloaded.get(),
            self.frames_invalid.get(),
            self.in_flight_commands.get(),
            self.groups.get(),
            commit.quantile(0.5),
            commit.quantile(0.99),
            request.quantile(0.99),
        )
    }
}

#[allow(clippy::float_arithmetic)] // Prometheus wants seconds; the exposition only.
fn render_histogram(
    out: &mut String,
    name: &str,
    help: &str,
    distribution: &Distribution,
    buckets: &[u64],
    scale: f64,
) {
    let histogram = distribution.histogram.lock().expect("not poisoned");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for bound in buckets {
        let count = histogram.count_between(1, *bound);
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\"}} {count}",
            *bound as f64 * scale
        );
    }
    let total = histogram.len();
    let sum = distribution.sum.load(Ordering::Relaxed) as f64 * scale;
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {total}\n{name}_sum {sum}\n{name}_count {total}"
    );
}

/// Serves `GET /metrics` and `GET /status` until `shutdown` resolves. One request per
/// connection, each read bounded in size and time.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let answer =
                tokio::time::timeout(Duration::from_secs(5), answer_http(stream, &metrics));
            let _ = answer.await;
        });
    }
}

async fn answer_http(mut stream: tokio::net::TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = vec![0u8; MAX_HTTP_REQUEST_BYTES];
    let mut read = 0;
    while read < request.len() && !request[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut request[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&request[..read]);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = match path {
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        "/status" => ("200 OK", "text/plain", metrics.status()),
        _ => (
            "404 Not Found",
            "text/plain",
            "try /metrics or /status\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
