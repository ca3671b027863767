//! `tally`: the engine binary.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tally_engine::ingest::{Clock, Engine, Recovery, ResultsWritten};
use tally_engine::log::position_text;
use tally_engine::program::parse_and_compile;
use tally_engine::replay::{Replayer, Stats};
use tally_engine::server::certs::{self as engine_certs, Authority, CertPaths, Identity};
use tally_engine::server::config::{ClockSetting, ServeConfig};
use tally_engine::server::ServerOptions;
use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};
use tally_protocol::CommandResult;

mod demo;

// The core allocates many small, short-lived objects (results, lines); glibc malloc spends
// a third of the time consolidating them under load, mimalloc does not.
#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

#[derive(Parser)]
#[command(name = "tally", version, about = "A streaming loyalty ledger")]
struct Cli {
    #[command(subcommand)]
    command: Tool,
}

#[derive(Subcommand)]
enum Tool {
    /// Applies a file of commands (JSON lines) offline through the engine core and prints
    /// the final balances as CSV.
    Replay {
        /// Program files (TOML) installed before the first command; repeat for more merchants.
        #[arg(long = "program", required = true)]
        programs: Vec<PathBuf>,
        /// The command file, or `-` for standard input.
        #[arg(long)]
        input: PathBuf,
        /// Write the balances here instead of standard output.
        #[arg(long)]
        balances_out: Option<PathBuf>,
        /// Write every command's result (and the engine's ticks) as JSON lines.
        #[arg(long)]
        results_out: Option<PathBuf>,
        /// Threads a batch's commands are applied on, merchants split between them
        /// (default: the cores available but one).
        #[arg(long, default_value_t = tally_engine::shards::default_count())]
        shards: usize,
    },
    /// Applies commands (JSON lines) durably: each result is written only after the command
    /// is in the write-ahead log on disk. On start, recovers the state from the log.
    Ingest {
        /// The data directory (created if missing).
        #[arg(long, default_value = "tally-data")]
        data: PathBuf,
        /// Programs installed on first start (logged); a version already installed is skipped.
        #[arg(long = "program")]
        programs: Vec<PathBuf>,
        /// The command file, or `-` for standard input.
        #[arg(long, default_value = "-")]
        input: PathBuf,
        /// `wall` (a live engine) or `event` (the latest event time: imports, comparisons with replay).
        #[arg(long, default_value = "wall", value_parser = ["wall", "event"])]
        clock: String,
        /// Write the balances here when the input ends.
        #[arg(long)]
        balances_out: Option<PathBuf>,
        /// Take a checkpoint (and compact the log) after this many logged commands; one is
        /// also taken when the input ends. 0: none (recovery replays the whole log).
        #[arg(long, default_value_t = tally_engine::ingest::CHECKPOINT_EVERY_COMMANDS)]
        checkpoint_every: u64,
        /// Keep this many older checkpoints, and the log since the oldest of them, so that
        /// `tally snapshot --as-of` can go back that far.
        #[arg(long, default_value_t = 0)]
        keep_checkpoints: usize,
        /// Threads a group's commands are applied on, merchants split between them
        /// (default: the cores available but one).
        #[arg(long, default_value_t = tally_engine::shards::default_count())]
        shards: usize,
        /// `all` writes every command's result; `rejected` only those of the commands that
        /// were rejected, and the answers to queries (a bulk import's report of what did not
        /// go in).
        #[arg(long, default_value = "all", value_parser = ["all", "rejected"])]
        results: String,
    },
    /// Serves terminals and operators over QUIC (TLS with client certificates). With no flags:
    /// data in ./tally-data, a development CA and server certificate made on first start, the
    /// demo program, listening on 127.0.0.1:7878, metrics on 127.0.0.1:9878. A tally.toml
    /// (./tally.toml or --config) sets everything the flags set, and the limits.
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// The metrics and status HTTP address, or `off`.
        #[arg(long)]
        metrics: Option<String>,
        /// More program files to install (a version already installed is skipped).
        #[arg(long = "program")]
        programs: Vec<PathBuf>,
        /// Do not install the built-in demo program.
        #[arg(long)]
        no_demo_program: bool,
        #[arg(long, value_parser = ["wall", "event"])]
        clock: Option<String>,
        #[arg(long)]
        checkpoint_every: Option<u64>,
        /// Threads a group's commands are applied on (default: the cores available but one).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// Issues and revokes certificates of the engine's CA (made by the first `tally serve`).
    Certs {
        #[command(subcommand)]
        action: CertsAction,
    },
    /// Prints a running server's health, read from its metrics address.
    Status {
        #[arg(long, default_value = tally_engine::server::config::DEFAULT_METRICS)]
        metrics: std::net::SocketAddr,
    },
    /// Writes every member's balances (of all merchants, or one) as of one log position, as
    /// CSV or Parquet: from a stopped engine's data directory, or streamed from a running
    /// server (`--server`, with an operator's certificate) while it goes on serving.
    Snapshot {
        /// The data directory (without `--server`), or where the CA certificate is (with it).
        #[arg(long, default_value = "tally-data")]
        data: PathBuf,
        /// A running server's address: the snapshot is streamed from it.
        #[arg(long, requires = "cert")]
        server: Option<std::net::SocketAddr>,
        /// The operator's certificate (PEM), e.g. from `tally certs issue --admin NAME`.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Its key (default: the certificate's path with the extension `.key`).
        #[arg(long)]
        key: Option<PathBuf>,
        /// The engine's CA certificate (default: <data>/certs/ca.pem).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The file to write; `.parquet` means Parquet unless `--format` says otherwise.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        merchant: Option<String>,
        /// `csv` or `parquet` (default: from the file's extension).
        #[arg(long, value_parser = ["csv", "parquet"])]
        format: Option<String>,
        /// Balances as they were at this time (RFC 3339 or a date: its midnight UTC), from
        /// the checkpoints and the log kept (`--data` only).
        #[arg(long, conflicts_with = "server")]
        as_of: Option<String>,
    },
    /// Liability (by tier and month of expiry), tiers, and a period's activity by rule and
    /// promotion with breakage, from a stopped engine's data directory.
    Report {
        #[arg(long, default_value = "tally-data")]
        data: PathBuf,
        #[arg(long)]
        merchant: Option<String>,
        /// Start of the period (inclusive): RFC 3339 time or a date (midnight UTC).
        #[arg(long)]
        from: Option<String>,
        /// End of the period (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// `json`, `csv` or `html` (default: from `--out`'s extension, else JSON).
        #[arg(long, value_parser = ["json", "csv", "html"])]
        format: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validates program files and names each mistake with its place.
    CheckProgram {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// The whole product in one command: starts an engine (temporary data directory, demo
    /// program) on 127.0.0.1, drives it over QUIC with a simulated POS fleet for --duration,
    /// prints the figures, members' balances and tiers read back over the network, and the
    /// liability, then shuts down cleanly. --offline: the core alone on generated commands.
    Demo {
        #[arg(long, default_value_t = 100_000)]
        members: u64,
        /// How long the fleet sends (`20s`, `5s`, `500ms`).
        #[arg(long, default_value = "20s", value_parser = tally_loadgen::parse_duration)]
        duration: std::time::Duration,
        /// Commands per second, all terminals together (within what a busy 2-core machine
        /// sustains with the fleet on it too, see docs/performance.md).
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Commands per request frame.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// The earlier demo: a synthetic day through the core in memory, no disk, no network.
        #[arg(long)]
        offline: bool,
        /// With --offline: commands to generate.
        #[arg(long, default_value_t = 500_000, requires = "offline")]
        commands: u64,
        /// With --offline: also write the generated commands here (JSON lines), e.g. to time
        /// `tally replay`.
        #[arg(long, requires = "offline")]
        save_input: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertsAction {
    /// A terminal certificate (--merchant, --terminal, optionally --store) or an operator's
    /// (--admin NAME, optionally --merchant to limit it to one merchant).
    Issue {
        #[arg(long, default_value = "tally-data")]
        data: PathBuf,
        #[arg(long)]
        merchant: Option<String>,
        #[arg(long)]
        store: Option<String>,
        #[arg(long, conflicts_with = "admin")]
        terminal: Option<String>,
        #[arg(long)]
        admin: Option<String>,
        /// Where to write NAME.pem and NAME.key (default: <data>/certs/issued).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Adds a certificate's serial number to the revocation list; a running server refuses it
    /// within a second, no restart needed.
    Revoke {
        #[arg(long, default_value = "tally-data")]
        data: PathBuf,
        #[arg(long)]
        serial: String,
        #[arg(long, default_value = "revoked")]
        note: String,
    },
}

fn main() -> Result<()> {
    tally_engine::allocator::tune();
    match Cli::parse().command {
        Tool::Serve {
            config,
            data,
            listen,
            metrics,
            programs,
            no_demo_program,
            clock,
            checkpoint_every,
            shards,
        } => {
            let mut config = serve_config(config.as_deref())?;
            config.data = data.unwrap_or(config.data);
            config.listen = listen.unwrap_or(config.listen);
            config.metrics = metrics.unwrap_or(config.metrics);
            config.programs.extend(programs);
            config.demo_program &= !no_demo_program;
            config.clock = match clock.as_deref() {
                Some("event") => ClockSetting::Event,
                Some(_) => ClockSetting::Wall,
                None => config.clock,
            };
            config.checkpoint_every = checkpoint_every.unwrap_or(config.checkpoint_every);
            config.shards = shards.unwrap_or(config.shards);
            serve(config)
        }
        Tool::Certs { action } => certs(action),
        Tool::Status { metrics } => status(metrics),
        Tool::Replay {
            programs,
            input,
            balances_out,
            results_out,
            shards,
        } => replay(&programs, &input, balances_out, results_out, shards),
        Tool::Ingest {
            data,
            programs,
            input,
            clock,
            balances_out,
            checkpoint_every,
            keep_checkpoints,
            shards,
            results,
        } => {
            let clock = if clock == "event" {
                Clock::Event
            } else {
                Clock::Wall
            };
            let results = if results == "rejected" {
                ResultsWritten::Rejected
            } else {
                ResultsWritten::All
            };
            let options = IngestOptions {
                clock,
                balances_out,
                checkpoint_every,
                keep_checkpoints,
                shards,
                results,
            };
            ingest(&data, &programs, &input, options)
        }
        Tool::CheckProgram { files } => check_programs(&files),
        Tool::Report {
            data,
            merchant,
            from,
            to,
            format,
            out,
        } => report(&data, merchant.as_deref(), (from, to), format, out),
        Tool::Snapshot {
            data,
            server: Some(server),
            cert,
            key,
            ca,
            out,
            merchant,
            format,
            ..
        } => {
            let cert = cert.expect("clap requires --cert with --server");
            let client = SnapshotClient {
                key: key.unwrap_or_else(|| cert.with_extension("key")),
                ca: ca.unwrap_or_else(|| data.join("certs").join("ca.pem")),
                cert,
                server,
            };
            snapshot_from_server(&client, &out, merchant, format.as_deref())
        }
        Tool::Snapshot {
            data,
            out,
            merchant,
            format,
            as_of,
            ..
        } => {
            let as_of = as_of.as_deref().map(parse_time).transpose()?;
            snapshot(&data, &out, merchant.as_deref(), format.as_deref(), as_of)
        }
        Tool::Demo {
            members,
            duration,
            rate,
            batch,
            offline,
            commands,
            save_input,
        } => {
            if offline {
                return demo(members, commands, save_input);
            }
            anyhow::ensure!(
                rate > 0 && batch > 0,
                "--rate and --batch must be at least 1"
            );
            demo::live(&demo::LiveDemo {
                members,
                rate_per_s: rate,
                duration,
                batch,
            })
        }
    }
}

fn read_programs(paths: &[PathBuf]) -> Result<Vec<String>> {
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
        .collect()
}

fn replay(
    programs: &[PathBuf],
    input: &PathBuf,
    balances_out: Option<PathBuf>,
    results_out: Option<PathBuf>,
    shards: usize,
) -> Result<()> {
    let texts = read_programs(programs)?;
    let mut replayer = match Replayer::new(texts) {
        Ok(replayer) => replayer,
        Err(errors) => bail!("the program is not valid:\n{errors}"),
    };
    replayer.set_shards(shard_count(shards)?);
    let mut results: Option<BufWriter<File>> = match &results_out {
        Some(path) => Some(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let mut write_error = None;
    let mut line = Vec::new();
    let mut out = |result: &CommandResult| {
        if let Some(file) = results.as_mut() {
            line.clear();
            result.write_json(&mut line);
            line.push(b'\n');
            if let Err(error) = file.write_all(&line) {
                write_error.get_or_insert(error);
            }
        }
    };
    let started = Instant::now();
    if input.as_os_str() == "-" {
        replayer.run(
            BufReader::with_capacity(1 << 20, std::io::stdin()),
            &mut out,
        )?;
    } else {
        let file = File::open(input).with_context(|| format!("opening {}", input.display()))?;
        replayer.run(BufReader::with_capacity(1 << 20, file), &mut out)?;
    }
    let elapsed = started.elapsed();
    if let Some(error) = write_error {
        return Err(error).context("writing results");
    }
    if let Some(mut file) = results {
        file.flush()?;
    }
    match balances_out {
        Some(path) => replayer.write_balances(BufWriter::new(File::create(&path)?))?,
        None => replayer.write_balances(BufWriter::new(std::io::stdout().lock()))?,
    }
    eprintln!("{}", summary(&replayer.stats, elapsed));
    eprintln!("state digest {:032x}", replayer.ledger().digest());
    // Freeing millions of members one by one takes seconds; the process ends here anyway.
    std::mem::forget(replayer);
    Ok(())
}

fn shard_count(shards: usize) -> Result<usize> {
    let limit = tally_engine::shards::MAX_SHARDS;
    anyhow::ensure!(
        (1..=limit).contains(&shards),
        "--shards must be 1..={limit}"
    );
    Ok(shards)
}

struct IngestOptions {
    clock: Clock,
    balances_out: Option<PathBuf>,
    checkpoint_every: u64,
    keep_checkpoints: usize,
    shards: usize,
    results: ResultsWritten,
}

fn ingest(data: &Path, programs: &[PathBuf], input: &Path, options: IngestOptions) -> Result<()> {
    let texts = read_programs(programs)?;
    let (mut engine, recovery) = Engine::open(data, options.clock)?;
    eprintln!("{}", recovered(data, &recovery));
    engine.set_checkpoint_every(options.checkpoint_every);
    engine.set_checkpoints_kept(options.keep_checkpoints);
    engine.set_shards(shard_count(options.shards)?);
    engine.set_results_written(options.results);
    engine.install_programs(&texts)?;
    // Results are written on a thread of their own: `Stdout`, not its (thread-bound) lock.
    let mut output = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    if input.as_os_str() == "-" {
        engine.run(
            BufReader::with_capacity(1 << 20, std::io::stdin()),
            &mut output,
        )?;
    } else {
        let file = File::open(input).with_context(|| format!("opening {}", input.display()))?;
        engine.run(BufReader::with_capacity(1 << 20, file), &mut output)?;
    }
    for failure in engine.failed_checkpoints() {
        eprintln!("a background checkpoint failed (the log kept everything): {failure}");
    }
    if let Some(path) = options.balances_out {
        tally_engine::replay::write_balances(
            engine.ledger(),
            BufWriter::new(File::create(&path)?),
        )?;
    }
    if options.shards > 1 {
        eprintln!(
            "{} groups applied on {} shards (the others named one shard's merchants only)",
            engine.sharded_groups(),
            options.shards
        );
    }
    eprintln!("state digest {:032x}", engine.ledger().digest());
    std::mem::forget(engine);
    Ok(())
}

fn recovered(data: &Path, recovery: &Recovery) -> String {
    let checkpoint = match &recovery.checkpoint {
        Some(loaded) => format!(
            "checkpoint of batch {} ({} bytes, loaded in {:.3} s), then ",
            loaded.last_batch,
            loaded.bytes,
            loaded.elapsed.as_secs_f64()
        ),
        None => String::new(),
    };
    format!(
        "recovered {}{} commands in {} batches ({} members) from {} in {:.3} s; state digest {:032x}",
        checkpoint,
        recovery.commands,
        recovery.batches,
        recovery.members,
        data.display(),
        recovery.elapsed.as_secs_f64(),
        recovery.digest
    )
}

fn report(
    data: &Path,
    merchant: Option<&str>,
    (from, to): (Option<String>, Option<String>),
    format: Option<String>,
    out: Option<PathBuf>,
) -> Result<()> {
    use tally_engine::report::{build, to_csv, to_html, Period};
    anyhow::ensure!(data.is_dir(), "no data directory at {}", data.display());
    let period = Period {
        from: from.as_deref().map(parse_time).transpose()?,
        to: to.as_deref().map(parse_time).transpose()?,
    };
    let format = format.unwrap_or_else(|| {
        let extension = out
            .as_ref()
            .and_then(|p| p.extension()?.to_str().map(str::to_string));
        extension
            .filter(|e| e == "csv" || e == "html")
            .unwrap_or("json".into())
    });
    let (engine, recovery) = Engine::open(data, Clock::Event)?;
    eprintln!("{}", recovered(data, &recovery));
    let mut report = build(engine.ledger(), engine.log(), merchant, period)?;
    if let Some(from) = period.from {
        // The states at the period's ends, from the checkpoints and the log kept.
        use tally_engine::history::ledger_as_of;
        let log = engine.log();
        let end = period.to.map(|to| ledger_as_of(data, log, to)).transpose();
        match (ledger_as_of(data, log, from), end) {
            (Ok(start), Ok(end)) => {
                let end = end.as_ref().map_or(engine.ledger(), |end| &end.ledger);
                tally_engine::report::add_tier_movements(&mut report, &start.ledger, end);
            }
            (Err(error), _) | (_, Err(error)) => {
                eprintln!("tier movements left out: {error}")
            }
        }
    }
    let text = match format.as_str() {
        "csv" => to_csv(&report),
        "html" => to_html(&report),
        _ => serde_json::to_string_pretty(&report)? + "\n",
    };
    match out {
        Some(path) => {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    std::mem::forget(engine);
    Ok(())
}

/// An RFC 3339 time, or a date meaning its midnight UTC.
fn parse_time(text: &str) -> Result<tally_engine::Timestamp> {
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.to_utc());
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .with_context(|| format!("{text:?} is neither an RFC 3339 time nor a date"))?;
    Ok(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
}

fn snapshot_format(format: Option<&str>, out: &Path) -> tally_engine::snapshot::Format {
    use tally_engine::snapshot::Format;
    match format {
        Some("parquet") => Format::Parquet,
        Some(_) => Format::Csv,
        None => Format::of_path(out),
    }
}

fn snapshot(
    data: &Path,
    out: &Path,
    merchant: Option<&str>,
    format: Option<&str>,
    as_of: Option<tally_engine::Timestamp>,
) -> Result<()> {
    use tally_engine::snapshot::write;
    anyhow::ensure!(data.is_dir(), "no data directory at {}", data.display());
    let format = snapshot_format(format, out);
    if let Some(at) = as_of {
        let log = tally_engine::log::CommandLog::open(&data.join("log.redb"))?;
        let past = tally_engine::history::ledger_as_of(data, &log, at)?;
        let rows = write(
            past.ledger.snapshot_blocks(merchant),
            past.log_position,
            format,
            out,
        )?;
        let position = position_text(past.log_position);
        eprintln!(
            "{rows} members as of {at} ({position}, entries up to {}) written to {}",
            past.last_entry_seq,
            out.display()
        );
        std::mem::forget(past);
        return Ok(());
    }
    let (engine, recovery) = Engine::open(data, Clock::Event)?;
    eprintln!("{}", recovered(data, &recovery));
    let position = engine.last_batch();
    let rows = write(
        engine.ledger().snapshot_blocks(merchant),
        position,
        format,
        out,
    )?;
    let at = position_text(position);
    eprintln!("{rows} members as of {at} written to {}", out.display());
    std::mem::forget(engine);
    Ok(())
}

/// Where a running server is and who the operator is.
struct SnapshotClient {
    server: std::net::SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// Streams a snapshot from a running server into a file: the network on this thread, the
/// file written on another as the chunks arrive.
fn snapshot_from_server(
    client: &SnapshotClient,
    out: &Path,
    merchant: Option<String>,
    format: Option<&str>,
) -> Result<()> {
    use tally_protocol::{Body, Command, IdemKey, Origin, SnapshotQuery, SnapshotRows, Status};
    let format = snapshot_format(format, out);
    let config = tally_client::ClientConfig::from_files(
        client.server,
        &client.ca,
        &client.cert,
        &client.key,
    )?;
    let started = Instant::now();
    let now = chrono::Utc::now();
    let command = Command {
        // `*`: every merchant.
        merchant: merchant.clone().unwrap_or_else(|| "*".into()),
        origin: Origin::Admin(String::new()),
        // A query: its key is never remembered, only echoed.
        key: IdemKey::Id(now.timestamp_nanos_opt().unwrap_or_default() as u128),
        at: now,
        program_version: None,
        body: Body::Snapshot(SnapshotQuery {
            every_merchant: merchant.is_none(),
        }),
    };
    let (chunks, received) = std::sync::mpsc::sync_channel::<SnapshotRows>(8);
    let path = out.to_path_buf();
    let writer = std::thread::spawn(move || write_chunks(&received, format, &path));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let client = tally_client::Client::connect(config).await?;
        let result = client
            .snapshot(command, |chunk| {
                // The writer stopped on an error: it reports it.
                let _ = chunks.send(chunk);
            })
            .await;
        client.close().await;
        result
    });
    // The end of the chunks: the writer finishes the file.
    drop(chunks);
    let written = writer.join().expect("the writer does not panic");
    let result = result?;
    if let Status::Rejected { reason, message } = &result.status {
        bail!("the server refused the snapshot: {reason}: {message}");
    }
    let (rows, position, last_entry_seq) = written?;
    let at = position_text(position);
    eprintln!(
        "{rows} members as of {at} (entries up to {last_entry_seq}) streamed from {} to {} in {:.2} s",
        client.server,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Writes the chunks of one snapshot as they come; checks that the last one came and that
/// every row did. Returns the rows, the log position and the last entry number.
fn write_chunks(
    received: &std::sync::mpsc::Receiver<tally_protocol::SnapshotRows>,
    format: tally_engine::snapshot::Format,
    out: &Path,
) -> Result<(u64, Option<u64>, u64)> {
    let Ok(first) = received.recv() else {
        bail!("the server sent no rows");
    };
    let (position, last_entry_seq) = (first.log_position, first.last_entry_seq);
    let (mut last, mut rows_sent) = (false, 0);
    let chunks = std::iter::once(first)
        .chain(received.iter())
        .inspect(|chunk| {
            last = chunk.last;
            rows_sent = chunk.rows_sent;
        });
    let blocks = chunks.map(|chunk| chunk.rows);
    let written = tally_engine::snapshot::write(blocks, position, format, out)?;
    anyhow::ensure!(
        last && written == rows_sent,
        "the snapshot ended early: {written} rows of {rows_sent}"
    );
    Ok((written, position, last_entry_seq))
}

// A rate for display: the only float in the engine, never money.
#[allow(clippy::float_arithmetic)]
fn summary(stats: &Stats, elapsed: std::time::Duration) -> String {
    let rate = stats.commands as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut text = format!(
        "{} commands in {:.2} s ({:.0}/s): {} applied, {} duplicate, {} rejected; {} engine ticks",
        stats.commands,
        elapsed.as_secs_f64(),
        rate,
        stats.applied,
        stats.duplicates,
        stats.rejected,
        stats.ticks
    );
    for (reason, count) in &stats.rejected_by_reason {
        text.push_str(&format!("\n  rejected {reason}: {count}"));
    }
    text
}

fn check_programs(files: &[PathBuf]) -> Result<()> {
    let mut failed = false;
    for path in files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        match parse_and_compile(&text) {
            Ok(program) => println!(
                "{}: ok: merchant {:?} version {}: {} order rules, {} event rules, {} tiers, {} rewards, {} promotions",
                path.display(),
                program.merchant,
                program.version,
                program.order_rules.len(),
                program.event_rules.len(),
                program.tiers.len(),
                program.rewards.len(),
                program.promotions.list.len()
            ),
            Err(errors) => {
                failed = true;
                for error in &errors.0 {
                    println!("{}: {error}", path.display());
                }
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn demo(members: u64, commands: u64, save_input: Option<PathBuf>) -> Result<()> {
    println!("tally demo: {commands} commands from a coffee chain's terminals, {members} members (Zipf), demo program");
    let workload = Workload::new(WorkloadConfig::demo(members));
    let mut input = Vec::with_capacity(commands as usize * 400);
    for command in workload.take(commands as usize) {
        input.extend_from_slice(command.to_json_line().as_bytes());
        input.push(b'\n');
    }
    if let Some(path) = save_input {
        std::fs::write(&path, &input).with_context(|| format!("writing {}", path.display()))?;
        println!("commands written to {}", path.display());
    }
    let mut replayer =
        Replayer::new(vec![DEMO_PROGRAM.to_string()]).expect("the demo program is valid");
    let mut promotions = std::collections::BTreeMap::<String, (u64, u64)>::new();
    let mut count_promotions = |result: &CommandResult| {
        let Some(applied) = result.applied() else {
            return;
        };
        if result.command != tally_protocol::CommandKind::Purchase {
            return;
        }
        for promotion in &applied.promotions {
            promotions
                .entry(promotion.promotion.to_string())
                .or_default()
                .0 += 1;
        }
        for skipped in &applied.promotions_not_applied {
            promotions
                .entry(skipped.promotion.to_string())
                .or_default()
                .1 += 1;
        }
    };
    let started = Instant::now();
    replayer.run(std::io::Cursor::new(input), &mut count_promotions)?;
    let elapsed = started.elapsed();
    println!("{}", summary(&replayer.stats, elapsed));
    println!("\npromotions (purchases applied to / considered but not applied):");
    for (id, (applied, skipped)) in &promotions {
        println!("  {id:<16} {applied:>8} {skipped:>8}");
    }
    print_members(&replayer);
    Ok(())
}

fn print_members(replayer: &Replayer) {
    demo::print_tiers_and_liability(replayer.ledger());
    let Some(merchant) = replayer.ledger().merchant("demo") else {
        return;
    };
    let program = merchant.program();
    let mut top: Vec<_> = merchant.members.iter().collect();
    top.sort_by_key(|m| std::cmp::Reverse(m.points));
    println!("\ntop members:");
    println!(
        "  {:>8} {:<14} {:>8} {:>9} {:>8} {:<10} {:>7}",
        "member", "card", "points", "available", "credit", "tier", "orders"
    );
    for member in top.iter().take(8) {
        let card = member
            .aliases
            .first()
            .map(|a| format!("{a:?}"))
            .unwrap_or_default();
        let card = card
            .trim_start_matches("Card(\"")
            .trim_end_matches("\")")
            .to_string();
        println!(
            "  {:>8} {:<14} {:>8} {:>9} {:>8} {:<10} {:>7}",
            member.id,
            card,
            member.points,
            member.available_points(),
            tally_engine::money::from_minor(member.credit_minor, program.minor_units),
            program.tier_id(member.tier).unwrap_or_default(),
            member.counters.lifetime.orders
        );
    }
}

/// `--config`, else `./tally.toml` if there is one, else the defaults.
fn serve_config(path: Option<&Path>) -> Result<ServeConfig> {
    let path = match path {
        Some(path) => path.to_path_buf(),
        None if Path::new("tally.toml").exists() => PathBuf::from("tally.toml"),
        None => return Ok(ServeConfig::default()),
    };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    ServeConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))
}

fn serve(config: ServeConfig) -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    config.limits.check()?;
    let metrics = config.metrics_address()?;
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("creating {}", config.data.display()))?;
    let certs = engine_certs::ensure_development_certs(&config.data, &config.server_names)?;
    if certs.created {
        eprintln!(
            "created a development CA and a server certificate in {}:\n  CA certificate {} (give it to clients)\n  CA key {} (keep it secret: it issues terminal certificates)\n  server certificate {} for {}",
            certs.paths.dir.display(),
            certs.paths.ca_cert().display(),
            certs.paths.ca_key().display(),
            certs.paths.server_cert().display(),
            config.server_names.join(", ")
        );
    }
    eprintln!(
        "CA certificate {} SHA-256 fingerprint {}",
        certs.paths.ca_cert().display(),
        certs.ca_fingerprint
    );
    let clock = match config.clock {
        ClockSetting::Wall => Clock::Wall,
        ClockSetting::Event => Clock::Event,
    };
    let (mut engine, recovery) = Engine::open(&config.data, clock)?;
    eprintln!("{}", recovered(&config.data, &recovery));
    engine.set_checkpoint_every(config.checkpoint_every);
    engine.set_checkpoints_kept(config.keep_checkpoints);
    engine.set_shards(shard_count(config.shards)?);
    let mut texts = read_programs(&config.programs)?;
    if config.demo_program {
        texts.insert(0, DEMO_PROGRAM.to_string());
    }
    engine.install_programs(&texts)?;
    let merchants: Vec<String> = engine
        .ledger()
        .merchants()
        .map(|m| m.name.to_string())
        .collect();
    let options = ServerOptions {
        listen: config.listen,
        metrics,
        limits: config.limits.clone(),
        certs: certs.paths.clone(),
        handle_signals: true,
    };
    let running = tally_engine::server::start(engine, options)?;
    let metrics_text = match running.metrics_address {
        Some(address) => format!("metrics http://{address}/metrics"),
        None => "metrics off".to_string(),
    };
    tracing::info!(
        "tally serve ready: QUIC on {}, {metrics_text}, data {}, merchants [{}], {} shard(s)",
        running.address,
        config.data.display(),
        merchants.join(", "),
        config.shards
    );
    let summary = running.wait()?;
    tracing::info!(
        "tally serve stopped: {} connections, {} requests, {} commands; state committed and checkpointed",
        summary.connections,
        summary.requests,
        summary.commands
    );
    Ok(())
}

fn certs(action: CertsAction) -> Result<()> {
    match action {
        CertsAction::Issue {
            data,
            merchant,
            store,
            terminal,
            admin,
            out,
        } => {
            let paths = CertPaths::new(&data);
            let authority = Authority::load(&paths)
                .context("the engine's CA is made by the first `tally serve` (or give --data)")?;
            let (identity, stem) = match (terminal, admin) {
                (Some(terminal), None) => {
                    let Some(merchant) = merchant else {
                        bail!("a terminal certificate needs --merchant");
                    };
                    let stem = [
                        Some(merchant.as_str()),
                        store.as_deref(),
                        Some(terminal.as_str()),
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join("-");
                    let identity = Identity::Terminal {
                        merchant,
                        store,
                        terminal,
                    };
                    (identity, stem)
                }
                (None, Some(name)) => {
                    if store.is_some() {
                        bail!("an operator certificate names no store");
                    }
                    let stem = format!("admin-{name}");
                    (Identity::Admin { merchant, name }, stem)
                }
                _ => bail!("give --terminal (with --merchant) or --admin"),
            };
            let issued = authority.issue_client(&identity)?;
            let out = out.unwrap_or_else(|| paths.dir.join("issued"));
            let (cert, key) = engine_certs::save_issued(&issued, &out, &stem)?;
            println!(
                "issued a certificate for {identity}\n  certificate {}\n  key {}\n  serial {}",
                cert.display(),
                key.display(),
                issued.serial
            );
            Ok(())
        }
        CertsAction::Revoke { data, serial, note } => {
            let paths = CertPaths::new(&data);
            engine_certs::revoke(&paths, &serial, &note)?;
            println!(
                "revoked {serial}; a running server refuses it within a second ({})",
                paths.revoked().display()
            );
            Ok(())
        }
    }
}

/// Reads `/status` from a running server's metrics address.
fn status(metrics: std::net::SocketAddr) -> Result<()> {
    use std::io::Read;
    let timeout = std::time::Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&metrics, timeout)
        .with_context(|| format!("no tally server answers on {metrics}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: {metrics}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("{metrics} did not answer like a tally server");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{metrics} answered {}", head.lines().next().unwrap_or(""));
    }
    print!("address: {metrics}\n{body}");
    Ok(())
}
