//! A snapshot of a serving engine: `members` issued cards (a Zipf share of them with
//! purchases), purchases served at full speed by `Engine::serve` from a feeder thread (no
//! network: what the QUIC front door submits), and a snapshot of every member streamed meanwhile
//! to a Parquet file written on a thread of its own. Prints the snapshot's time and the
//! engine's throughput during it, and before and after it without one.
//!
//! `cargo run --release -p tally-benches --example live_snapshot -- DIR [members] [purchases] [seconds] [rounds]`
//!
//! With several rounds, each snapshot is followed by a window without one, and the median of
//! the rounds is printed too.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_benches::{memory_mb, thread_cpu_s};
use tally_engine::ingest::{Clock, Engine, Submission};
use tally_engine::snapshot::{write, Format};
use tally_engine::snapshot_stream::{Offer, RowSink};
use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};
use tally_protocol::{Body, Command, IdemKey, Origin, SnapshotQuery, SnapshotRows};

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

/// Commands per submission, as a busy terminal's frames.
const COMMANDS_PER_SUBMISSION: usize = 64;
const CARDS_PER_COMMAND: u64 = 100_000;

#[allow(clippy::float_arithmetic)] // rates for display only
fn main() {
    tally_engine::allocator::tune();
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .expect("usage: live_snapshot DIR [members] [purchases] [seconds] [rounds]"),
    );
    let number =
        |text: Option<String>, default: u64| text.map_or(default, |t| t.parse().expect("a number"));
    let members = number(args.next(), 1_000_000);
    let purchases = number(args.next(), members / 2);
    let seconds = number(args.next(), 5);
    let rounds = number(args.next(), 1).max(1) as usize;
    let data = dir.join("live-snapshot");
    let _ = std::fs::remove_dir_all(&data);

    let started = Instant::now();
    let mut workload = Workload::new(WorkloadConfig::purchases_only(members));
    let mut engine = loaded_engine(&data, members, purchases as usize, &mut workload);
    println!(
        "{members} cards issued and {purchases} purchases applied in {:.1} s; peak memory {} MB",
        started.elapsed().as_secs_f64(),
        memory_mb("VmHWM")
    );

    // What the engine thread does per row, alone: the snapshot's cost while serving.
    let started = Instant::now();
    let built: usize = engine.ledger().snapshot_blocks(None).map(|b| b.len()).sum();
    let building = started.elapsed();
    println!(
        "{built} rows built on one thread in {:.2} s ({:.2} µs a row)",
        building.as_secs_f64(),
        building.as_secs_f64() * 1e6 / built as f64
    );
    let (submit, submissions) = sync_channel::<Submission>(64);
    let engine_thread = std::thread::spawn(move || {
        engine.serve(&submissions).expect("serves");
        std::mem::forget(engine);
    });
    let acknowledged = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (submit, acknowledged, stop) = (submit.clone(), acknowledged.clone(), stop.clone());
        std::thread::spawn(move || feed(workload, &submit, &acknowledged, &stop))
    };
    let seconds_counted = {
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        std::thread::spawn(move || count_each_second(&acknowledged, &stop))
    };
    let window = Duration::from_secs(seconds);
    std::thread::sleep(Duration::from_secs(1)); // warm up
                                                // Windows without a snapshot on either side of each one: the rate drifts as the state
                                                // grows, and from window to window on a shared machine.
    let mut without = vec![rate(&acknowledged, || std::thread::sleep(window))];
    let out = dir.join("live-snapshot.parquet");
    let (mut rows, mut during) = (0, Vec::new());
    for _ in 0..rounds {
        during.push(rate(&acknowledged, || rows = snapshot(&submit, &out)));
        without.push(rate(&acknowledged, || std::thread::sleep(window)));
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("the feeder does not panic");
    let each_second = seconds_counted.join().expect("the counter does not panic");
    drop(submit);
    engine_thread.join().expect("the engine does not panic");

    let file_mb = std::fs::metadata(&out).map_or(0, |m| m.len()) >> 20;
    let mut shares = Vec::new();
    for (round, (rate_during, took)) in during.iter().enumerate() {
        let (before, after) = (without[round].0, without[round + 1].0);
        let share = 100.0 * rate_during / ((before + after) / 2.0);
        shares.push(share);
        println!(
            "snapshot {} of {rows} members to Parquet ({file_mb} MB) while serving: {:.2} s; \
             purchases/s {before:.0} before, {rate_during:.0} during, {after:.0} after: \
             {share:.0}% of the mean without",
            round + 1,
            took.as_secs_f64(),
        );
    }
    shares.sort_by(f64::total_cmp);
    let mut times: Vec<f64> = during.iter().map(|(_, took)| took.as_secs_f64()).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "median of {rounds}: snapshot {:.2} s, throughput during it {:.0}% of the mean without",
        times[times.len() / 2],
        shares[shares.len() / 2]
    );
    let thousands: Vec<String> = each_second.iter().map(|n| (n / 1000).to_string()).collect();
    println!(
        "purchases acknowledged in each second, thousands: {}; the slowest second: {}",
        thousands.join(" "),
        each_second.iter().min().copied().unwrap_or(0)
    );
    println!("peak memory {} MB", memory_mb("VmHWM"));
    let _ = std::fs::remove_file(out);
}

/// Commands acknowledged per second while `work` runs, and how long it ran.
#[allow(clippy::float_arithmetic)] // rates for display only
fn rate(acknowledged: &AtomicU64, work: impl FnOnce()) -> (f64, Duration) {
    let (count, started) = (acknowledged.load(Ordering::Relaxed), Instant::now());
    work();
    let elapsed = started.elapsed();
    let done = acknowledged.load(Ordering::Relaxed) - count;
    (done as f64 / elapsed.as_secs_f64(), elapsed)
}

/// Commands acknowledged in each whole second until told to stop: a pause of the engine
/// shows as a slow second.
fn count_each_second(acknowledged: &AtomicU64, stop: &AtomicBool) -> Vec<u64> {
    let mut counts = Vec::new();
    let mut last = acknowledged.load(Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let now = acknowledged.load(Ordering::Relaxed);
        counts.push(now - last);
        last = now;
    }
    counts
}

/// An engine holding `members` issued cards and `purchases` purchases on them.
fn loaded_engine(data: &Path, members: u64, purchases: usize, workload: &mut Workload) -> Engine {
    let (mut engine, _) = Engine::open(data, Clock::Event).expect("engine opens");
    engine.set_checkpoint_every(0);
    engine
        .install_programs(&[DEMO_PROGRAM.to_string()])
        .expect("program");
    let mut input = Vec::new();
    for batch in 0..members.div_ceil(CARDS_PER_COMMAND) {
        let count = CARDS_PER_COMMAND.min(members - batch * CARDS_PER_COMMAND);
        input.extend_from_slice(format!(
            r#"{{"merchant":"demo","admin":"ops","txn":"cards-{batch}","at":"2026-01-05T10:00:00Z","issue_cards":{{"count":{count},"prefix":"C"}}}}"#
        ).as_bytes());
        input.push(b'\n');
    }
    for command in workload.take(purchases) {
        input.extend_from_slice(command.to_json_line().as_bytes());
        input.push(b'\n');
    }
    engine
        .run(std::io::Cursor::new(input), &mut std::io::sink())
        .expect("loads");
    engine
}

/// Submits purchases as fast as the engine takes them, until told to stop.
fn feed(
    mut workload: Workload,
    submit: &SyncSender<Submission>,
    acknowledged: &Arc<AtomicU64>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let commands: Vec<Command> = workload.by_ref().take(COMMANDS_PER_SUBMISSION).collect();
        let acknowledged = acknowledged.clone();
        let submission = Submission::new(
            commands,
            Box::new(move |results| {
                acknowledged.fetch_add(results.len() as u64, Ordering::Relaxed);
            }),
        );
        submit.send(submission).expect("the engine serves");
    }
}

/// The engine's side of the rows channel: never waits.
struct ChannelSink(SyncSender<SnapshotRows>);

impl RowSink for ChannelSink {
    fn offer(&mut self, rows: SnapshotRows) -> Offer {
        match self.0.try_send(rows) {
            Ok(()) => Offer::Taken,
            Err(TrySendError::Full(rows)) => Offer::Full(rows),
            Err(TrySendError::Disconnected(_)) => Offer::Closed,
        }
    }
}

/// Streams a snapshot of every member into `out`; returns the rows written once the file is
/// closed.
fn snapshot(submit: &SyncSender<Submission>, out: &Path) -> u64 {
    let (rows, chunks) = sync_channel(4);
    let (answer, answered) = sync_channel(1);
    let command = Command {
        merchant: "demo".into(),
        origin: Origin::Admin("bench".into()),
        key: IdemKey::Id(1),
        at: "2026-01-05T10:00:00Z".parse().expect("a time"),
        program_version: None,
        body: Body::Snapshot(SnapshotQuery::default()),
    };
    submit
        .send(Submission::snapshot(
            command,
            Box::new(move |results| {
                let _ = answer.send(results);
            }),
            Box::new(ChannelSink(rows)),
        ))
        .expect("the engine serves");
    let written = write_chunks(&chunks, out);
    let result = answered.recv().expect("answered");
    assert!(
        result[0].applied().is_some(),
        "{}",
        result[0].to_json_line()
    );
    written
}

#[allow(clippy::float_arithmetic)] // seconds for display only
fn cpu_s((user, system): (f64, f64)) -> f64 {
    user + system
}

#[allow(clippy::float_arithmetic)] // seconds for display only
fn write_chunks(chunks: &Receiver<SnapshotRows>, out: &Path) -> u64 {
    let first = chunks.recv().expect("rows");
    let position = first.log_position;
    // How long the writer waits for the engine's rows: what paces the snapshot when it is
    // not the writer's own work.
    let mut waited = Duration::ZERO;
    let later = std::iter::from_fn(|| {
        let started = Instant::now();
        let chunk = chunks.recv().ok();
        waited += started.elapsed();
        chunk
    });
    let all = std::iter::once(first).chain(later);
    let blocks = all.map(|chunk| chunk.rows);
    let cpu_before = thread_cpu_s();
    let written = write(blocks, position, Format::Parquet, out).expect("written");
    println!(
        "the Parquet writer waited {:.2} s for rows and used {:.2} s of CPU",
        waited.as_secs_f64(),
        cpu_s(thread_cpu_s()) - cpu_s(cpu_before)
    );
    written
}
