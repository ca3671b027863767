//! `tally-loadgen`: drives a running `tally serve` with a simulated POS fleet (`docs/loadgen.md`).
//!
//! - `run`: open loop at a constant aggregate rate (or `--find-max`: steps up until the p99
//!   objective or errors), latency from each frame's intended send time, results by kind and
//!   reason, `--verify`, `--json`, `--html`, `--baseline`.
//! - `baseline`: the same frames through a raw quinn echo, the engine, redb appends; fsyncs.
//!
//! Certificates are issued on the fly from the engine's CA in `--data` (the server's data
//! directory), one per simulated terminal and operator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use tally_certs::CertPaths;
use tally_loadgen::baseline::{self, BaselineConfig};
use tally_loadgen::{
    CaCredentials, Fleet, FleetConfig, FleetSummary, Report, StepConfig, StepFigures,
};

// Frames, commands and results are many small, short-lived allocations: glibc malloc spent a
// quarter of the load generator's time consolidating them (the engine's binary uses it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tally-loadgen",
    about = "Drives tally serve with a simulated POS fleet over QUIC"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Open loop at a constant rate (or stepping up with --find-max); prints the figures.
    Run(RunArgs),
    /// The same frames through a raw quinn echo, the engine and redb appends; the fsync rate.
    Baseline {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Commands in all.
        #[arg(long, default_value_t = 200_000)]
        commands: usize,
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Frames in flight per connection.
        #[arg(long, default_value_t = 8)]
        streams: usize,
        /// Rounds of echo then engine, each on frames of its own; the figures are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

#[derive(Args, Clone)]
struct FleetArgs {
    /// The server's data directory: its CA issues the fleet's certificates.
    #[arg(long, default_value = "tally-data")]
    data: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7878")]
    server: SocketAddr,
    /// Merchants: `demo`, then `demo-2`, … (each gets the demo program under its name).
    #[arg(long, default_value_t = 1)]
    merchants: usize,
    #[arg(long, default_value_t = 4)]
    stores: usize,
    /// Terminals per store, each with its own certificate and QUIC connection.
    #[arg(long, default_value_t = 4)]
    terminals: usize,
    /// Members per merchant (Zipf-distributed draws).
    #[arg(long, default_value_t = 1_000_000)]
    members: u64,
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    #[arg(long, default_value_t = 200)]
    skus: usize,
    #[arg(long, default_value_t = 5)]
    max_lines: usize,
    #[arg(
        long,
        default_value = "purchase=85,return=3,quote=5,hold=3,adjust=1,event=3"
    )]
    mix: String,
    /// Percent of purchases that pay with points (some exceed the balance).
    #[arg(long, default_value_t = 4)]
    redeem_percent: u32,
    /// Percent of purchases that present the promo code SPRING10.
    #[arg(long, default_value_t = 2)]
    code_percent: u32,
    /// Percent of acknowledged commands sent again with the same key: each must be `duplicate`.
    #[arg(long, default_value_t = 1)]
    retry_percent: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args, Clone)]
struct RunArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// Commands per second, all terminals together (the first step with --find-max).
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// The measured time per step (`30s`, `500ms`, `2m`).
    #[arg(long, default_value = "30s", value_parser = tally_loadgen::parse_duration)]
    duration: Duration,
    /// Sent before each step's measured time and left out of its figures.
    #[arg(long, default_value = "5s", value_parser = tally_loadgen::parse_duration)]
    warmup: Duration,
    /// Commands per request frame.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Frames in flight per connection.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Step the rate up (x --step-factor) until p99 passes --slo-p99-ms or errors appear.
    #[arg(long)]
    find_max: bool,
    #[arg(long, default_value_t = 10.0)]
    slo_p99_ms: f64,
    #[arg(long, default_value_t = 1.25)]
    step_factor: f64,
    #[arg(long, default_value_t = 12)]
    max_steps: usize,
    /// With --find-max: then run at these percentages of the maximum found, e.g. `80,150`
    /// (the latency at 80 %, the back-pressure at 150 %).
    #[arg(long, value_delimiter = ',')]
    then_percent: Vec<u64>,
    /// Read every touched member back at the end and compare with the acknowledged results.
    #[arg(long)]
    verify: bool,
    /// Also measure the baselines (echo, redb, fsync) on this run's fleet.
    #[arg(long)]
    baseline: bool,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    html: Option<PathBuf>,
    #[arg(long)]
    no_progress: bool,
}

impl FleetArgs {
    fn config(&self) -> Result<FleetConfig> {
        let merchants = (1..=self.merchants)
            .map(|n| match n {
                1 => "demo".to_string(),
                n => format!("demo-{n}"),
            })
            .collect();
        Ok(FleetConfig {
            merchants,
            stores_per_merchant: self.stores,
            terminals_per_store: self.terminals,
            members: self.members,
            zipf_exponent: self.zipf,
            skus: self.skus,
            max_lines: self.max_lines,
            mix: self.mix.parse()?,
            redeem_percent: self.redeem_percent,
            code_percent: self.code_percent,
            retry_percent: self.retry_percent,
            seed: self.seed,
            ..FleetConfig::demo(self.members)
        })
    }

    fn credentials(&self) -> Result<CaCredentials> {
        CaCredentials::load(&self.data).with_context(|| {
            format!(
                "the engine's CA in {} (start tally serve first, or give --data)",
                self.data.display()
            )
        })
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.mode {
            Mode::Run(args) => run(args).await,
            Mode::Baseline {
                fleet,
                commands,
                batch,
                streams,
                rounds,
                json,
            } => {
                let measured = measure_baseline(&fleet, commands, batch, streams, rounds).await?;
                print!("{}", measured.text());
                if let Some(path) = json {
                    write(&path, &serde_json::to_string_pretty(&measured)?)?;
                }
                Ok(())
            }
        }
    })
}

async fn measure_baseline(
    fleet: &FleetArgs,
    commands: usize,
    batch: usize,
    streams: usize,
    rounds: usize,
) -> Result<baseline::Baseline> {
    if batch == 0 || streams == 0 || rounds == 0 {
        bail!("--batch, --streams and --rounds must be at least 1");
    }
    let credentials = fleet.credentials()?;
    let paths = CertPaths::new(&fleet.data);
    let read = |path: PathBuf| std::fs::read(&path).with_context(|| format!("{}", path.display()));
    let config = BaselineConfig {
        server: fleet.server,
        server_cert_pem: read(paths.server_cert())?,
        server_key_pem: read(paths.server_key())?,
        credentials: &credentials,
        fleet: fleet.config()?,
        commands,
        batch,
        streams,
        rounds,
        scratch_dir: &fleet.data,
    };
    Ok(baseline::measure(config).await?)
}

async fn run(args: RunArgs) -> Result<()> {
    if args.batch == 0 || args.streams == 0 || args.rate == 0 {
        bail!("--rate, --batch and --streams must be at least 1");
    }
    let started_at = chrono::Utc::now().to_rfc3339();
    let credentials = args.fleet.credentials()?;
    let fleet = Fleet::connect(args.fleet.config()?, args.fleet.server, &credentials).await?;
    let step = StepConfig {
        rate_per_s: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        batch: args.batch,
        streams: args.streams,
        progress: !args.no_progress,
    };
    println!(
        "{} connections ({} merchants x {} stores x {} terminals, and an operator each), {} members per merchant",
        fleet.connections(),
        args.fleet.merchants,
        args.fleet.stores,
        args.fleet.terminals,
        args.fleet.members
    );
    let (mut steps, max_sustainable_per_s) = if args.find_max {
        fleet
            .find_max(&step, args.step_factor, args.max_steps, args.slo_p99_ms)
            .await
    } else {
        (vec![fleet.step(&step).await], None)
    };
    if let Some(max) = max_sustainable_per_s {
        for percent in &args.then_percent {
            let rate_per_s = (max as u64 * percent / 100).max(1);
            let mut figures = fleet
                .step(&StepConfig {
                    rate_per_s,
                    ..step.clone()
                })
                .await;
            figures.label = format!("{percent} % of the maximum");
            steps.push(figures);
        }
    }
    print_steps(
        &steps,
        max_sustainable_per_s,
        args.slo_p99_ms,
        args.find_max,
    );
    let verify = if args.verify {
        let report = fleet.verify().await?;
        print!("{}", report.text());
        Some(report)
    } else {
        None
    };
    fleet.close().await;
    let baseline = if args.baseline {
        let commands = (args.rate as usize * 5).clamp(20_000, 400_000);
        let measured = measure_baseline(&args.fleet, commands, args.batch, 8, 1).await?;
        print!("{}", measured.text());
        Some(measured)
    } else {
        None
    };
    let report = Report {
        started_at,
        server: args.fleet.server.to_string(),
        fleet: FleetSummary::of(&fleet, &args.fleet.mix),
        steps,
        max_sustainable_per_s,
        slo_p99_ms: args.find_max.then_some(args.slo_p99_ms),
        verify,
        baseline,
    };
    if let Some(path) = &args.json {
        write(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &args.html {
        write(path, &tally_loadgen::html::render(&report))?;
    }
    let failed_verify = report.verify.as_ref().is_some_and(|v| !v.passed());
    let failed_retries = report
        .steps
        .iter()
        .any(|s| s.retries.deliberate_not_duplicate > 0);
    if failed_verify || failed_retries {
        bail!("the engine's answers disagree with what it acknowledged (see above)");
    }
    Ok(())
}

fn print_steps(steps: &[StepFigures], max: Option<f64>, slo_p99_ms: f64, find_max: bool) {
    for step in steps {
        if !step.label.is_empty() {
            let verdict = if step.sustainable(slo_p99_ms) {
                "within"
            } else {
                "outside"
            };
            println!("\n{} ({verdict} the objective):", step.label);
        }
        print!("{}", step.table());
    }
    if find_max {
        match max {
            Some(max) => println!(
                "\nmaximum sustainable throughput: {max:.0} commands/s (p99 <= {slo_p99_ms} ms, no errors)"
            ),
            None => println!("\nno step was within the objective (p99 <= {slo_p99_ms} ms, no errors)"),
        }
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
