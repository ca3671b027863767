//! `--html`: one self-contained file (inline SVG, no scripts, nothing fetched) with, for every
//! step, latency over time (p50, p99 and max of each second) and the percentile distribution
//! (the HdrHistogram plot: 1 / (1 − percentile) on a log axis), and the figures as tables.
//!
//! Coordinates are floats (drawing only).
#![allow(clippy::float_arithmetic)]

use std::fmt::Write;

use crate::figures::StepFigures;
use crate::Report;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
/// Room around the plot; the left side also holds the latency labels.
const MARGIN: f64 = 64.0;

pub fn render(report: &Report) -> String {
    let mut html = String::new();
    html.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tally-loadgen report</title>\n<style>\
         body{font:14px system-ui,sans-serif;margin:2em;max-width:960px;color:#222}\
         table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}\
         th{background:#f4f4f4}svg{background:#fcfcfc;border:1px solid #ddd;margin:.5em 0}</style></head><body>\n",
    );
    let fleet = &report.fleet;
    let _ = writeln!(
        html,
        "<h1>tally-loadgen</h1><p>{} against {}: {} merchants × {} stores × {} terminals ({} QUIC connections), \
         {} members per merchant (Zipf {}), {} SKUs, baskets of 1–{} lines, mix {}.</p>",
        escape(&report.started_at),
        escape(&report.server),
        fleet.merchants,
        fleet.stores_per_merchant,
        fleet.terminals_per_store,
        fleet.connections,
        fleet.members_per_merchant,
        fleet.zipf_exponent,
        fleet.skus,
        fleet.max_lines,
        escape(&fleet.mix)
    );
    if let Some(max) = report.max_sustainable_per_s {
        let _ = writeln!(
            html,
            "<p><b>Maximum sustainable throughput: {max:.0} commands/s</b> (p99 within {} ms, no errors).</p>",
            report.slo_p99_ms.unwrap_or_default()
        );
    }
    html.push_str(&steps_table(&report.steps));
    for (index, step) in report.steps.iter().enumerate() {
        let _ = writeln!(
            html,
            "<h2>Step {}{}: {} commands/s offered, frames of {}</h2>",
            index + 1,
            if step.label.is_empty() {
                String::new()
            } else {
                format!(" ({})", escape(&step.label))
            },
            step.rate_offered_per_s,
            step.batch
        );
        html.push_str(&timeline_chart(step));
        html.push_str(&distribution_chart(step));
    }
    if let Some(verify) = &report.verify {
        let _ = writeln!(
            html,
            "<h2>Verification</h2><pre>{}</pre>",
            escape(&verify.text())
        );
    }
    if let Some(baseline) = &report.baseline {
        let _ = writeln!(
            html,
            "<h2>Baselines</h2><pre>{}</pre>",
            escape(&baseline.text())
        );
    }
    html.push_str("</body></html>\n");
    html
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn steps_table(steps: &[StepFigures]) -> String {
    let mut html = String::from(
        "<table><tr><th>offered/s</th><th>achieved/s</th><th>purchases/s</th><th>p50 ms</th><th>p90</th>\
         <th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>p99 from send</th><th>errors</th><th>retries dup/sent</th></tr>\n",
    );
    for s in steps {
        let l = &s.latency_ms;
        let _ = writeln!(
            html,
            "<tr><td>{:.0}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td>\
             <td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{}/{}</td></tr>",
            s.throughput_offered_per_s,
            s.throughput_achieved_per_s,
            s.purchases_per_s,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.p99_99,
            l.max,
            s.service_latency_ms.p99,
            s.error_commands,
            s.retries.deliberate_duplicate,
            s.retries.deliberate_sent
        );
    }
    html.push_str("</table>\n");
    html
}

/// Maps a value onto a log10 axis from `low` to `high`.
fn log_position(value: f64, low: f64, high: f64, length: f64) -> f64 {
    let value = value.clamp(low, high);
    (value.log10() - low.log10()) / (high.log10() - low.log10()) * length
}

/// The latency axis: log scale from 0.1 ms to the next power of ten above the largest value.
fn latency_axis(largest_ms: f64) -> (f64, f64) {
    let high = 10f64.powf(largest_ms.max(1.0).log10().ceil());
    (0.1, high)
}

fn y_axis(svg: &mut String, low: f64, high: f64) {
    let mut tick = low;
    while tick <= high * 1.0001 {
        let y = HEIGHT - MARGIN - log_position(tick, low, high, HEIGHT - 2.0 * MARGIN);
        let _ = write!(
            svg,
            "<line x1=\"{MARGIN}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{tick} ms</text>",
            WIDTH - MARGIN,
            MARGIN - 4.0,
            y + 3.0
        );
        tick *= 10.0;
    }
}

/// A line in one of the charts' colours, with its stroke on the element itself so that the
/// chart draws the same wherever the SVG is shown.
fn polyline(points: &[(f64, f64)], series: &str) -> String {
    let stroke = match series {
        "p50" => "stroke=\"#2a7\"",
        "max" => "stroke=\"#888\" stroke-dasharray=\"3 3\"",
        _ => "stroke=\"#d62\"",
    };
    let coordinates: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    format!(
        "<polyline {stroke} fill=\"none\" stroke-width=\"1.5\" points=\"{}\"/>",
        coordinates.join(" ")
    )
}

fn timeline_chart(step: &StepFigures) -> String {
    let seconds = step.timeline.len().max(1) as f64;
    let largest = step.timeline.iter().map(|s| s.max_ms).fold(0.0, f64::max);
    let (low, high) = latency_axis(largest);
    let x = |second: u64| MARGIN + (second as f64 + 0.5) / seconds * (WIDTH - 2.0 * MARGIN);
    let y = |ms: f64| HEIGHT - MARGIN - log_position(ms, low, high, HEIGHT - 2.0 * MARGIN);
    let mut svg = format!(
        "<p>Latency over time, by second of intended send (log scale; the shaded seconds are the warm-up):</p>\
         <svg width=\"{WIDTH}\" height=\"{HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let warmup = step.timeline.iter().filter(|s| s.warmup).count() as f64;
    if warmup > 0.0 {
        let _ = write!(
            svg,
            "<rect x=\"{MARGIN}\" y=\"{MARGIN}\" width=\"{:.1}\" height=\"{}\" fill=\"#f0f0f0\"/>",
            warmup / seconds * (WIDTH - 2.0 * MARGIN),
            HEIGHT - 2.0 * MARGIN
        );
    }
    y_axis(&mut svg, low, high);
    let label_every = (step.timeline.len() / 10).max(1);
    for second in (0..step.timeline.len()).step_by(label_every) {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{second}</text>",
            x(second as u64),
            HEIGHT - MARGIN + 14.0
        );
    }
    for (class, value) in [("p50", 0), ("p99", 1), ("max", 2)] {
        let points: Vec<(f64, f64)> = step
            .timeline
            .iter()
            .filter(|s| s.answered > 0)
            .map(|s| {
                let ms = [s.p50_ms, s.p99_ms, s.max_ms][value];
                (x(s.second), y(ms))
            })
            .collect();
        svg.push_str(&polyline(&points, class));
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">seconds ({} in all); green p50, red p99, grey max</text></svg>",
        WIDTH / 2.0,
        HEIGHT - 12.0,
        step.timeline.len()
    );
    svg
}

fn distribution_chart(step: &StepFigures) -> String {
    let largest = step.latency_ms.max;
    let (low, high) = latency_axis(largest);
    // x: 1 / (1 − q) from 1 (the median's left) to 10^5 (99.999 %).
    let x = |percentile: f64| {
        let inverse = 1.0 / (1.0 - percentile / 100.0).max(1e-5);
        MARGIN + log_position(inverse, 1.0, 1e5, WIDTH - 2.0 * MARGIN)
    };
    let y = |ms: f64| HEIGHT - MARGIN - log_position(ms, low, high, HEIGHT - 2.0 * MARGIN);
    let mut svg = format!(
        "<p>Latency by percentile (measured window; x: 1/(1−percentile), log scale):</p>\
         <svg width=\"{WIDTH}\" height=\"{HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    y_axis(&mut svg, low, high);
    for (label, percentile) in [
        ("0", 0.0),
        ("90", 90.0),
        ("99", 99.0),
        ("99.9", 99.9),
        ("99.99", 99.99),
        ("99.999", 99.999),
    ] {
        let at = x(percentile);
        let _ = write!(
            svg,
            "<line x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{MARGIN}\" y2=\"{}\" stroke=\"#eee\"/>\
             <text x=\"{at:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{label}%</text>",
            HEIGHT - MARGIN,
            HEIGHT - MARGIN + 14.0
        );
    }
    let points: Vec<(f64, f64)> = step
        .distribution
        .iter()
        .filter(|p| p.percentile < 100.0)
        .map(|p| (x(p.percentile), y(p.latency_ms)))
        .collect();
    svg.push_str(&polyline(&points, "p99"));
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::Recorder;
    use std::time::{Duration, Instant};

    #[test]
    fn the_report_is_one_file_with_both_charts_and_nothing_fetched() {
        let started = Instant::now();
        let step = Recorder::new(started, Duration::ZERO).figures(100, 1, started);
        let report = Report {
            started_at: "2026-11-22T12:00:00Z".into(),
            server: "127.0.0.1:7878".into(),
            fleet: crate::FleetSummary {
                merchants: 1,
                stores_per_merchant: 1,
                terminals_per_store: 1,
                connections: 2,
                members_per_merchant: 10,
                zipf_exponent: 1.1,
                skus: 15,
                max_lines: 5,
                mix: "purchase=1".into(),
                redeem_percent: 0,
                code_percent: 0,
                retry_percent: 0,
                run_tag: "t".into(),
            },
            steps: vec![step],
            max_sustainable_per_s: Some(100.0),
            slo_p99_ms: Some(10.0),
            verify: None,
            baseline: None,
        };
        let html = render(&report);
        assert_eq!(html.matches("<svg").count(), 2);
        assert!(!html.contains("src=") && !html.contains("<script"));
        // Lines carry their own colour: the SVG draws the same outside this page.
        assert!(html.contains("<polyline stroke=\"#d62\""));
        assert!(html.contains("Maximum sustainable throughput: 100"));
    }
}
