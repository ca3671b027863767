//! The tally load generator: a simulated POS fleet over QUIC, measured open loop. The
//! `tally-loadgen` binary and the engine's `tally demo` are both built on this crate.
//!
//! - [`fleet`]: merchants × stores × terminals, Zipf-distributed members, a SKU catalog,
//!   baskets, the command mix, returns of acknowledged purchases, deliberate retries.
//! - [`run`]: every terminal on its own QUIC connection with its own certificate (issued by
//!   the caller's [`run::Credentials`]), a constant aggregate rate, latency from each frame's
//!   intended send time, `find_max`, and the read-back for verification.
//! - [`figures`]: HdrHistogram percentiles, results by kind and reason, the timeline.
//! - [`verify`]: the model of acknowledged results that the read-back is compared with.
//! - [`baseline`]: the limits under the engine, measured in the same run: a raw quinn echo of
//!   the same frames, redb appends of the same bytes, fsyncs.
//! - [`html`]: the self-contained report with its charts.
//!
//! It depends on the protocol, the client and the certificates, never on the engine: the
//! engine's `tally demo` uses it against a server it starts in its own process.

pub mod baseline;
pub mod figures;
pub mod fleet;
pub mod html;
pub mod mix;
pub mod run;
pub mod verify;

use serde::Serialize;

pub use figures::StepFigures;
pub use fleet::FleetConfig;
pub use run::{CaCredentials, Credentials, Fleet, StepConfig};
pub use verify::VerifyReport;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Certs(#[from] tally_certs::CertError),
    #[error(transparent)]
    Client(#[from] tally_client::ClientError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("storage baseline: {0}")]
    Storage(String),
    /// An error frame: nothing of the request was applied.
    #[error("the server refused a request: {0}")]
    Refused(tally_protocol::Reason),
    /// No answer after every attempt: the request may or may not have been applied.
    #[error("no answer: {0}")]
    NoAnswer(String),
    #[error("the echo server's TLS set-up: {0}")]
    EchoTls(String),
    #[error("a load task stopped: {0}")]
    Task(String),
}

/// A duration as people write it on a command line: `20s`, `500ms`, `2m`, or seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: not a duration"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("{text:?}: use ms, s or m")),
    }
}

/// Everything one run measured: what `--json` writes and `--html` draws.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When the run started (RFC 3339).
    pub started_at: String,
    pub server: String,
    pub fleet: FleetSummary,
    pub steps: Vec<StepFigures>,
    /// `--find-max`: the highest achieved throughput of a step within the objective.
    pub max_sustainable_per_s: Option<f64>,
    pub slo_p99_ms: Option<f64>,
    pub verify: Option<VerifyReport>,
    pub baseline: Option<baseline::Baseline>,
}

/// The fleet as the report describes it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
    pub merchants: usize,
    pub stores_per_merchant: usize,
    pub terminals_per_store: usize,
    pub connections: usize,
    pub members_per_merchant: u64,
    pub zipf_exponent: f64,
    pub skus: usize,
    pub max_lines: usize,
    pub mix: String,
    pub redeem_percent: u32,
    pub code_percent: u32,
    pub retry_percent: u32,
    pub run_tag: String,
}

impl FleetSummary {
    pub fn of(fleet: &Fleet, mix: &str) -> FleetSummary {
        let config = fleet.config();
        FleetSummary {
            merchants: config.merchants.len(),
            stores_per_merchant: config.stores_per_merchant,
            terminals_per_store: config.terminals_per_store,
            connections: fleet.connections(),
            members_per_merchant: config.members,
            zipf_exponent: config.zipf_exponent,
            skus: config.skus,
            max_lines: config.max_lines,
            mix: mix.to_string(),
            redeem_percent: config.redeem_percent,
            code_percent: config.code_percent,
            retry_percent: config.retry_percent,
            run_tag: config.run_tag.clone(),
        }
    }
}
