//! What a run measured: latency from each frame's intended send time (HdrHistogram), results
//! by kind and reason, retries and duplicates, errors, and a timeline by second.
//!
//! Latency figures are floats (milliseconds for people to read); counts are integers.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tally_protocol::{CommandResult, Status};

use crate::fleet::Sent;

/// Latencies are recorded in microseconds, from 1 µs to one hour.
const HIGHEST_US: u64 = 3_600_000_000;

fn histogram(significant_digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, significant_digits).expect("valid bounds")
}

/// One second of the run, by intended send time.
#[derive(Debug)]
struct Second {
    latency_us: Histogram<u64>,
    offered: u64,
    answered: u64,
    errors: u64,
}

impl Second {
    fn new() -> Second {
        Second {
            latency_us: histogram(2),
            offered: 0,
            answered: 0,
            errors: 0,
        }
    }
}

/// Collects one step's figures; shared by the frames' tasks behind a mutex (a frame takes it
/// once, so its cost is per frame, not per command).
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    measure_from: Instant,
    latency_us: Histogram<u64>,
    /// From when each frame was actually sent: the server's part, without the wait for a
    /// free stream. Beside `latency_us` it shows where the time went under overload.
    service_us: Histogram<u64>,
    seconds: Vec<Second>,
    by_kind: BTreeMap<String, KindCounts>,
    retries: RetryCounts,
    errors: BTreeMap<String, u64>,
    commands_offered: u64,
    commands_answered: u64,
    purchases_answered: u64,
    last_answer: Option<Instant>,
}

/// Results of one kind of command.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindCounts {
    pub applied: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// Rejections by reason code.
    pub rejected_by_reason: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RetryCounts {
    /// Acknowledged commands sent again on purpose with the same key and content.
    pub deliberate_sent: u64,
    /// Of those, answered `duplicate` (all of them should be).
    pub deliberate_duplicate: u64,
    /// Of those, answered anything else: an exactly-once failure, counted as an error too.
    pub deliberate_not_duplicate: u64,
    /// Frames sent again after a lost connection or a timeout (the same bytes).
    pub transport_retries: u64,
    /// Why the attempts before them failed (the client's error, e.g. a timeout or a stream
    /// reset by the server).
    pub transport_retry_causes: BTreeMap<String, u64>,
}

impl Recorder {
    pub fn new(started: Instant, warmup: Duration) -> Recorder {
        Recorder {
            started,
            measure_from: started + warmup,
            latency_us: histogram(3),
            service_us: histogram(3),
            seconds: Vec::new(),
            by_kind: BTreeMap::new(),
            retries: RetryCounts::default(),
            errors: BTreeMap::new(),
            commands_offered: 0,
            commands_answered: 0,
            purchases_answered: 0,
            last_answer: None,
        }
    }

    fn second(&mut self, due: Instant) -> &mut Second {
        let index = due.saturating_duration_since(self.started).as_secs() as usize;
        while self.seconds.len() <= index {
            self.seconds.push(Second::new());
        }
        &mut self.seconds[index]
    }

    fn measured(&self, due: Instant) -> bool {
        due >= self.measure_from
    }

    /// A frame of `commands` was due at `due` (counted whether or not it is ever answered).
    pub fn offered(&mut self, due: Instant, commands: u64) {
        self.second(due).offered += commands;
        if self.measured(due) {
            self.commands_offered += commands;
        }
    }

    /// A frame due at `due` and sent at `sent` was answered now with results: every command
    /// in it waited as long.
    pub fn answered(&mut self, due: Instant, sent: Instant, results: &[(Sent, &CommandResult)]) {
        let now = Instant::now();
        let latency_us = now.saturating_duration_since(due).as_micros() as u64;
        let service_us = now.saturating_duration_since(sent).as_micros() as u64;
        let commands = results.len() as u64;
        let second = self.second(due);
        second.answered += commands;
        second
            .latency_us
            .saturating_record_n(latency_us.max(1), commands);
        if !self.measured(due) {
            return;
        }
        self.latency_us
            .saturating_record_n(latency_us.max(1), commands);
        self.service_us
            .saturating_record_n(service_us.max(1), commands);
        self.commands_answered += commands;
        self.last_answer = Some(now);
        for (sent, result) in results {
            self.count(sent, result);
        }
    }

    fn count(&mut self, sent: &Sent, result: &CommandResult) {
        let kind = sent.kind.name();
        self.purchases_answered += u64::from(kind == "purchase");
        if sent.deliberate_retry {
            self.retries.deliberate_sent += 1;
            if matches!(result.status, Status::Duplicate { .. }) {
                self.retries.deliberate_duplicate += 1;
            } else {
                self.retries.deliberate_not_duplicate += 1;
                *self
                    .errors
                    .entry("retry not answered duplicate".into())
                    .or_default() += 1;
            }
        }
        let counts = self.by_kind.entry(kind.to_string()).or_default();
        match &result.status {
            Status::Applied(_) => counts.applied += 1,
            Status::Duplicate { .. } => counts.duplicate += 1,
            Status::Rejected { reason, .. } => {
                counts.rejected += 1;
                *counts
                    .rejected_by_reason
                    .entry(reason.code().to_string())
                    .or_default() += 1;
            }
        }
    }

    /// A frame due at `due` got no results: `what` says why (`overloaded`, …).
    pub fn failed(&mut self, due: Instant, commands: u64, what: &str) {
        self.second(due).errors += commands;
        if self.measured(due) {
            *self.errors.entry(what.to_string()).or_default() += commands;
        }
    }

    pub fn transport_retry(&mut self, cause: &str) {
        self.retries.transport_retries += 1;
        *self
            .retries
            .transport_retry_causes
            .entry(cause.to_string())
            .or_default() += 1;
    }

    /// The last whole second before `now`: (second, commands answered, p99 in ms).
    pub fn last_second(&self, now: Instant) -> Option<(u64, u64, f64)> {
        let index = now
            .saturating_duration_since(self.started)
            .as_secs()
            .checked_sub(1)?;
        let second = self.seconds.get(index as usize)?;
        let p99_ms = second.latency_us.value_at_quantile(0.99) as f64 / 1000.0;
        Some((index + 1, second.answered, p99_ms))
    }

    /// The figures of the measured window, which ended at `ended` (when the last frame was due).
    pub fn figures(&self, rate_per_s: u64, batch: usize, ended: Instant) -> StepFigures {
        let window = ended.saturating_duration_since(self.measure_from);
        // Answers to the last frames arrive after the schedule ends: a server that falls
        // behind takes longer than the window, and the achieved rate says so.
        let answering = self
            .last_answer
            .map_or(window, |last| {
                last.saturating_duration_since(self.measure_from)
            })
            .max(window);
        let per_s = |count: u64, over: Duration| count as f64 / over.as_secs_f64().max(1e-9);
        let warmup_seconds = self.measure_from.duration_since(self.started).as_secs() as usize;
        StepFigures {
            label: String::new(),
            rate_offered_per_s: rate_per_s,
            batch,
            window_s: window.as_secs_f64(),
            commands_offered: self.commands_offered,
            commands_answered: self.commands_answered,
            throughput_offered_per_s: per_s(self.commands_offered, window),
            throughput_achieved_per_s: per_s(self.commands_answered, answering),
            purchases_per_s: per_s(self.purchases_answered, answering),
            latency_ms: Percentiles::of(&self.latency_us),
            service_latency_ms: Percentiles::of(&self.service_us),
            by_kind: self.by_kind.clone(),
            retries: self.retries.clone(),
            errors: self.errors.clone(),
            error_commands: self.errors.values().sum(),
            timeline: self
                .seconds
                .iter()
                .enumerate()
                .map(|(index, second)| SecondFigures {
                    second: index as u64,
                    warmup: index < warmup_seconds,
                    offered: second.offered,
                    answered: second.answered,
                    errors: second.errors,
                    p50_ms: ms(second.latency_us.value_at_quantile(0.5)),
                    p99_ms: ms(second.latency_us.value_at_quantile(0.99)),
                    max_ms: ms(second.latency_us.max()),
                })
                .collect(),
            distribution: distribution(&self.latency_us),
        }
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let at = |q: f64| ms(histogram.value_at_quantile(q));
        Percentiles {
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p99_9: at(0.999),
            p99_99: at(0.9999),
            max: ms(histogram.max()),
        }
    }
}

/// The latency at percentiles spaced evenly on a log scale of 1 / (1 − q): the classic
/// HdrHistogram plot, where the tail gets as much room as the median.
fn distribution(histogram: &Histogram<u64>) -> Vec<PercentilePoint> {
    if histogram.is_empty() {
        return Vec::new();
    }
    (0..=50)
        .map(|step| {
            let quantile = 1.0 - 10f64.powf(-f64::from(step) / 10.0);
            PercentilePoint {
                percentile: quantile * 100.0,
                latency_ms: ms(histogram.value_at_quantile(quantile)),
            }
        })
        .chain(std::iter::once(PercentilePoint {
            percentile: 100.0,
            latency_ms: ms(histogram.max()),
        }))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub latency_ms: f64,
}

/// One second of the run by intended send time.
#[derive(Debug, Clone, Serialize)]
pub struct SecondFigures {
    pub second: u64,
    /// Part of the warm-up, left out of the step's totals.
    pub warmup: bool,
    pub offered: u64,
    pub answered: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One step of a run at one offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct StepFigures {
    /// What the step was for (`find-max step 3`, `80 % of the maximum`, …); empty for a
    /// single run.
    pub label: String,
    pub rate_offered_per_s: u64,
    pub batch: usize,
    /// The measured window: the schedule after the warm-up.
    pub window_s: f64,
    pub commands_offered: u64,
    pub commands_answered: u64,
    pub throughput_offered_per_s: f64,
    pub throughput_achieved_per_s: f64,
    pub purchases_per_s: f64,
    /// From the intended send time: what a terminal would see (the figure that counts).
    pub latency_ms: Percentiles,
    /// From the actual send time, for comparison: it leaves out waiting for a free stream.
    pub service_latency_ms: Percentiles,
    pub by_kind: BTreeMap<String, KindCounts>,
    pub retries: RetryCounts,
    /// Commands without a result, by why (`overloaded`, `gave up: …`), and deliberate retries
    /// not answered `duplicate`.
    pub errors: BTreeMap<String, u64>,
    pub error_commands: u64,
    pub timeline: Vec<SecondFigures>,
    pub distribution: Vec<PercentilePoint>,
}

impl StepFigures {
    /// The final table, as text.
    pub fn table(&self) -> String {
        let l = &self.latency_ms;
        let mut text = format!(
            "offered {:.0} commands/s, achieved {:.0} commands/s ({:.0} purchases/s), {} commands in {:.1} s, frames of {}\n\
             latency from intended send (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}  max {:.2}\n",
            self.throughput_offered_per_s,
            self.throughput_achieved_per_s,
            self.purchases_per_s,
            self.commands_answered,
            self.window_s,
            self.batch,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.p99_99,
            l.max
        );
        let s = &self.service_latency_ms;
        text.push_str(&format!(
            "latency from actual send (ms):   p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  p99.99 {:.2}  max {:.2}\n",
            s.p50, s.p90, s.p99, s.p99_9, s.p99_99, s.max
        ));
        text.push_str(&format!(
            "  {:<10} {:>10} {:>10} {:>10}  rejections by reason\n",
            "kind", "applied", "duplicate", "rejected"
        ));
        for (kind, counts) in &self.by_kind {
            let reasons: Vec<String> = counts
                .rejected_by_reason
                .iter()
                .map(|(reason, n)| format!("{reason} {n}"))
                .collect();
            text.push_str(&format!(
                "  {kind:<10} {:>10} {:>10} {:>10}  {}\n",
                counts.applied,
                counts.duplicate,
                counts.rejected,
                reasons.join(", ")
            ));
        }
        let r = &self.retries;
        text.push_str(&format!(
            "deliberate retries {} (answered duplicate {}, otherwise {}); frames resent after a lost connection or timeout {}\n",
            r.deliberate_sent, r.deliberate_duplicate, r.deliberate_not_duplicate, r.transport_retries
        ));
        for (cause, n) in &r.transport_retry_causes {
            text.push_str(&format!("  resent after: {cause}: {n}\n"));
        }
        if self.errors.is_empty() {
            text.push_str("errors: none\n");
        } else {
            for (what, n) in &self.errors {
                text.push_str(&format!("errors: {what}: {n} commands\n"));
            }
        }
        text
    }

    /// Within the latency objective and without errors.
    pub fn sustainable(&self, slo_p99_ms: f64) -> bool {
        self.error_commands == 0
            && self.latency_ms.p99 <= slo_p99_ms
            && self.throughput_achieved_per_s >= 0.95 * self.throughput_offered_per_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_protocol::{CommandKind, Reason};

    fn result(status: Status) -> CommandResult {
        CommandResult {
            merchant: "demo".into(),
            key: "k".into(),
            command: CommandKind::Purchase,
            status,
        }
    }

    #[test]
    fn latency_counts_from_the_due_time_and_warmup_is_left_out() {
        let started = Instant::now() - Duration::from_secs(3);
        let mut recorder = Recorder::new(started, Duration::from_secs(1));
        let sent = Sent {
            kind: CommandKind::Purchase,
            card: None,
            deliberate_retry: false,
        };
        let applied = result(Status::Applied(Box::default()));
        let rejected = result(Status::Rejected {
            reason: Reason::InsufficientPoints,
            message: String::new(),
        });
        // Due in the warm-up: not in the totals.
        recorder.offered(started, 1);
        recorder.answered(started, started, &[(sent.clone(), &applied)]);
        // Due 2 s ago and answered now: about 2,000 ms, whatever the send time was.
        let due = started + Duration::from_secs(1);
        recorder.offered(due, 2);
        recorder.answered(due, due, &[(sent.clone(), &applied), (sent, &rejected)]);
        let figures = recorder.figures(10, 2, started + Duration::from_secs(2));
        assert_eq!(figures.commands_offered, 2);
        assert_eq!(figures.commands_answered, 2);
        assert!(
            figures.latency_ms.p50 >= 2_000.0,
            "{:?}",
            figures.latency_ms
        );
        let purchases = &figures.by_kind["purchase"];
        assert_eq!((purchases.applied, purchases.rejected), (1, 1));
        assert_eq!(purchases.rejected_by_reason["insufficient_points"], 1);
        assert!(figures.timeline[0].warmup && !figures.timeline[1].warmup);
        assert!(!figures.sustainable(10.0));
    }

    #[test]
    fn a_deliberate_retry_answered_applied_is_an_error() {
        let started = Instant::now();
        let mut recorder = Recorder::new(started, Duration::ZERO);
        let retry = Sent {
            kind: CommandKind::Purchase,
            card: None,
            deliberate_retry: true,
        };
        let applied = result(Status::Applied(Box::default()));
        let duplicate = result(Status::Duplicate {
            first: Box::new(applied.clone()),
        });
        recorder.answered(
            started,
            started,
            &[(retry.clone(), &duplicate), (retry, &applied)],
        );
        let figures = recorder.figures(1, 1, started);
        assert_eq!(figures.retries.deliberate_duplicate, 1);
        assert_eq!(figures.retries.deliberate_not_duplicate, 1);
        assert_eq!(figures.error_commands, 1);
    }
}
