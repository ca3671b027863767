//! `tally-loadgen`: drives a running `tally serve` over QUIC with synthetic POS traffic.
//!
//! - `compare`: the same pre-encoded request frames, as fast as they are answered, first to a
//!   raw quinn echo server started here (same TLS, same certificates, answers each frame with
//!   its own bytes), then to the engine; prints both throughputs and their ratio.
//! - `rate`: open loop at a constant rate of frames; latency is measured from when each frame
//!   was due, not when it was sent, so a stall counts for every frame it delays (corrected for
//!   coordinated omission). Prints p50/p99/p99.9/max.
//!
//! It issues its own terminal certificates with the engine's CA (`--data`, the server's data
//! directory), one per simulated terminal, and gives every run fresh transaction numbers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use tally_client::{read_frame, Client, ClientConfig};
use tally_engine::server::certs::{Authority, CertPaths, Identity};
use tally_engine::workload::{Workload, WorkloadConfig};
use tally_protocol::wire::{self, HEADER_BYTES};
use tally_protocol::{Command, IdemKey, Origin, Status};

#[derive(Parser)]
#[command(name = "tally-loadgen", about = "Drives tally serve over QUIC")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Throughput of the engine against a raw quinn echo of the same frames.
    Compare(Common),
    /// Open loop at a constant rate; latency corrected for coordinated omission.
    Rate {
        #[command(flatten)]
        common: Common,
        /// Commands per second.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// The server's data directory (its CA issues the load generator's certificates).
    #[arg(long, default_value = "tally-data")]
    data: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7878")]
    server: SocketAddr,
    /// Simulated terminals, each with its own certificate and QUIC connection.
    #[arg(long, default_value_t = 8)]
    terminals: usize,
    /// Requests in flight per terminal (streams).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Commands per request frame.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Commands in all.
    #[arg(long, default_value_t = 100_000)]
    commands: usize,
    #[arg(long, default_value_t = 50_000)]
    members: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.mode {
            Mode::Compare(common) => compare(common).await,
            Mode::Rate { common, rate } => open_loop(common, rate).await,
        }
    })
}

/// Per terminal, its pre-encoded request frames (and how many commands each holds).
struct Load {
    configs: Vec<ClientConfig>,
    frames: Vec<Vec<(Vec<u8>, usize)>>,
    commands: usize,
}

fn prepare(common: &Common) -> Result<Load> {
    if common.terminals == 0 || common.streams == 0 || common.batch == 0 {
        bail!("--terminals, --streams and --batch must be at least 1");
    }
    let paths = CertPaths::new(&common.data);
    let authority = Authority::load(&paths).with_context(|| {
        format!(
            "the engine's CA in {} (start tally serve first)",
            common.data.display()
        )
    })?;
    let ca = std::fs::read(paths.ca_cert())?;
    let mut configs = Vec::new();
    for index in 0..common.terminals {
        let identity = Identity::Terminal {
            merchant: "demo".into(),
            store: None,
            terminal: format!("lg-{index}"),
        };
        let issued = authority.issue_client(&identity)?;
        let mut config = ClientConfig::new(
            common.server,
            ca.clone(),
            Some((issued.cert_pem.into_bytes(), issued.key_pem.into_bytes())),
        );
        config.max_attempts = 20;
        configs.push(config);
    }
    // Event times end now (the server's wall clock); fresh keys every run.
    let run = chrono::Utc::now();
    let mut workload = WorkloadConfig::demo(common.members);
    workload.interval_ms = 1;
    workload.code_percent = 0;
    workload.start = run - chrono::TimeDelta::milliseconds(common.commands as i64);
    let mut by_terminal: Vec<Vec<Command>> = vec![Vec::new(); common.terminals];
    let mut renamed_keys = std::collections::HashMap::new();
    for (index, mut command) in Workload::new(workload).take(common.commands).enumerate() {
        let slot = index % common.terminals;
        let terminal = format!("lg-{slot}");
        let IdemKey::Terminal { terminal: old, txn } = &command.key else {
            continue; // operator set-up commands: not a terminal's
        };
        let renamed = format!("{}-{old}-{txn}", run.timestamp_micros());
        renamed_keys.insert(
            (old.clone(), txn.clone()),
            (terminal.clone(), renamed.clone()),
        );
        command.key = IdemKey::Terminal {
            terminal: terminal.clone(),
            txn: renamed,
        };
        command.origin = Origin::Terminal(terminal);
        rename_references(&mut command, &renamed_keys);
        by_terminal[slot].push(command);
    }
    let mut next_id = 1u64;
    let frames = by_terminal
        .into_iter()
        .map(|commands| {
            commands
                .chunks(common.batch)
                .map(|chunk| {
                    next_id += 1;
                    (wire::encode_request(next_id, chunk.to_vec()), chunk.len())
                })
                .collect()
        })
        .collect::<Vec<Vec<_>>>();
    let commands = frames.iter().flatten().map(|(_, n)| n).sum();
    Ok(Load {
        configs,
        frames,
        commands,
    })
}

/// Returns name the order by its original terminal and number: give them this run's names.
fn rename_references(
    command: &mut Command,
    renamed: &std::collections::HashMap<(String, String), (String, String)>,
) {
    if let tally_protocol::Body::Return(order) = &mut command.body {
        let original = (
            order.order.terminal.clone().unwrap_or_default(),
            order.order.txn.clone().unwrap_or_default(),
        );
        if let Some((terminal, txn)) = renamed.get(&original) {
            order.order.terminal = Some(terminal.clone());
            order.order.txn = Some(txn.clone());
        }
    }
}

/// Sends every terminal's frames with `streams` in flight each; returns commands per second.
async fn closed_loop(load: &Load, target: SocketAddr, streams: usize) -> Result<(f64, u64)> {
    let mut clients = Vec::new();
    for config in &load.configs {
        let mut config = config.clone();
        config.server = target;
        clients.push(Client::connect(config).await?);
    }
    let rejected = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, frames) in clients.iter().zip(&load.frames) {
        let frames = Arc::new(frames.clone());
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..streams {
            let (client, frames, next, rejected) = (
                client.clone(),
                frames.clone(),
                next.clone(),
                rejected.clone(),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((frame, _)) = frames.get(index) else {
                        return Ok::<(), anyhow::Error>(());
                    };
                    rejected.fetch_add(exchange(&client, frame).await?, Ordering::Relaxed);
                }
            }));
        }
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    for client in &clients {
        client.close().await;
    }
    Ok((
        rate(load.commands as u64, elapsed),
        rejected.load(Ordering::Relaxed),
    ))
}

/// One frame out, one answer back; the number of rejected results in it.
async fn exchange(client: &Client, frame: &[u8]) -> Result<u64> {
    let (mut send, mut recv) = client.open_stream().await?;
    send.write_all(frame).await?;
    send.finish()?;
    Ok(
        match read_frame(&mut recv, wire::MAX_FRAME_BYTES_CEILING).await? {
            wire::Frame::Results { results, .. } => results
                .iter()
                .filter(|r| matches!(r.status, Status::Rejected { .. }))
                .count() as u64,
            wire::Frame::Request { .. } => 0, // the echo
            wire::Frame::Rows { .. } => bail!("a rows frame answers only a snapshot request"),
            wire::Frame::Error {
                reason, message, ..
            } => bail!("refused: {reason}: {message}"),
        },
    )
}

#[allow(clippy::float_arithmetic)] // rates for display only
fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn compare(common: Common) -> Result<()> {
    let load = prepare(&common)?;
    let bytes: usize = load.frames.iter().flatten().map(|(f, _)| f.len()).sum();
    println!(
        "{} commands in {} frames of up to {} ({} bytes), {} terminals x {} streams",
        load.commands,
        load.frames.iter().map(Vec::len).sum::<usize>(),
        common.batch,
        bytes,
        common.terminals,
        common.streams
    );
    let echo = echo_server(&common.data).await?;
    let (echo_rate, _) = closed_loop(&load, echo.local_addr()?, common.streams).await?;
    echo.close(0u32.into(), b"done");
    println!("quinn echo of the same frames: {echo_rate:.0} commands/s");
    let (engine_rate, rejected) = closed_loop(&load, common.server, common.streams).await?;
    println!("tally serve (durable, group commit): {engine_rate:.0} commands/s ({rejected} rejected by the ledger's rules)");
    #[allow(clippy::float_arithmetic)]
    let ratio = engine_rate / echo_rate;
    println!("engine / echo: {ratio:.2}");
    Ok(())
}

async fn open_loop(common: Common, per_second: u64) -> Result<()> {
    let load = prepare(&common)?;
    let mut clients = Vec::new();
    for config in &load.configs {
        clients.push(Client::connect(config.clone()).await?);
    }
    // Frames interleaved over terminals, one due every `interval`.
    let mut schedule = Vec::new();
    let longest = load.frames.iter().map(Vec::len).max().unwrap_or(0);
    for index in 0..longest {
        for (terminal, frames) in load.frames.iter().enumerate() {
            if let Some((frame, count)) = frames.get(index) {
                schedule.push((terminal, frame.clone(), *count));
            }
        }
    }
    let frames_per_second = (per_second / common.batch as u64).max(1);
    let interval = Duration::from_nanos(1_000_000_000 / frames_per_second);
    // 1 µs to an hour, three significant digits.
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        3_600_000_000,
        3,
    )?));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(
        common.terminals * common.streams * 64,
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, (terminal, frame, _)) in schedule.into_iter().enumerate() {
        let due = started + interval * index as u32;
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await?;
        let (client, histogram) = (clients[terminal].clone(), histogram.clone());
        tasks.push(tokio::spawn(async move {
            let answered = exchange(&client, &frame).await;
            // From when it was due: waiting behind a stall counts.
            let micros = due.elapsed().as_micros() as u64;
            histogram
                .lock()
                .expect("not poisoned")
                .saturating_record(micros.max(1));
            drop(permit);
            answered
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let histogram = histogram.lock().expect("not poisoned");
    println!(
        "{} commands at {per_second}/s asked, {:.0}/s done, in frames of {}: latency from due time p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        load.commands,
        rate(load.commands as u64, elapsed),
        common.batch,
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.value_at_quantile(0.999),
        histogram.max()
    );
    Ok(())
}

/// A raw quinn server with the engine's TLS set-up that answers each frame with itself.
async fn echo_server(data: &Path) -> Result<quinn::Endpoint> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let paths = CertPaths::new(data);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(paths.ca_cert())? {
        roots.add(ca?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let chain =
        CertificateDer::pem_file_iter(paths.server_cert())?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(paths.server_key())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(64u32.into());
    config.transport_config(Arc::new(transport));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let mut header = [0u8; HEADER_BYTES];
                        recv.read_exact(&mut header).await.ok()?;
                        let header_read =
                            wire::decode_header(&header, &wire::Limits::default()).ok()?;
                        let mut payload = vec![0u8; header_read.payload_bytes as usize];
                        recv.read_exact(&mut payload).await.ok()?;
                        send.write_all(&header).await.ok()?;
                        send.write_all(&payload).await.ok()?;
                        send.finish().ok()
                    });
                }
            });
        }
    });
    Ok(endpoint)
}
