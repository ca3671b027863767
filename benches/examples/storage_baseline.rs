//! The limits under durable ingest, measured in one run on one disk, and ingest itself:
//! fsync rate, redb single-key durable commits, redb 1,000-key batches, large sequential
//! values, and `tally ingest`'s durable commands/s (one merchant and four, one shard and two),
//! so each figure is also a ratio; and one merchant's ingest writing only the rejected
//! results (`--results rejected`, a bulk import's mode).
//! `cargo run --release -p tally-benches --example storage_baseline -- [dir] [commands] [merchants shards [all|rejected]]`
// Floats here are rates for display, never money.
#![allow(clippy::float_arithmetic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, Durability, TableDefinition};
use tally_engine::ingest::{Clock, Engine, ResultsWritten};
use tally_engine::workload::{demo_program_of, interleaved, WorkloadConfig};

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

const TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("t");
/// Each measurement runs about this long.
const SPAN: Duration = Duration::from_secs(3);
/// A command's JSON form is about this long (the demo workload's average).
const COMMAND_BYTES: usize = 380;

fn main() {
    tally_engine::allocator::tune();
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "storage-baseline".into()));
    let mut numbers = args
        .by_ref()
        .take(3)
        .map(|n| n.parse::<usize>().expect("a number"));
    let commands = numbers.next().unwrap_or(200_000);
    std::fs::create_dir_all(&dir).expect("folder");
    // `MERCHANTS SHARDS` after the count: that ingest alone, in a process of its own. In one
    // process, each later ingest grows into fresh memory the earlier ones did not give back,
    // which on this machine makes it slower; alternate single runs to compare.
    if let (Some(merchants), Some(shards)) = (numbers.next(), numbers.next()) {
        let written = match args.next().as_deref() {
            None | Some("all") => ResultsWritten::All,
            Some("rejected") => ResultsWritten::Rejected,
            Some(other) => panic!("all or rejected, not {other}"),
        };
        let (rate, engine_cpu_s) = ingest(&dir, commands, merchants, shards, written);
        report(
            &format!("tally ingest: {merchants} merchant(s), {shards} shard(s), {written:?}"),
            rate,
            "commands",
        );
        // The engine thread sets the pace; its CPU time varies less from run to run.
        println!(
            "{:<52} {engine_cpu_s:>14.2} s",
            "  CPU time of the engine thread"
        );
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    println!("{:<52} {:>14}", "measurement (one thread)", "per second");
    report("fsync of a 4 KiB write", fsyncs(&dir), "fsyncs");
    report(
        "redb: one key per durable commit",
        redb_commits(&dir, 1, 100),
        "commits",
    );
    report(
        "redb: 1,000 keys of 380 B per durable commit",
        redb_commits(&dir, 1000, COMMAND_BYTES),
        "keys",
    );
    report(
        "redb: one 1,000-command value per durable commit",
        redb_commits(&dir, 1, 1000 * COMMAND_BYTES) * 1000.0,
        "commands",
    );
    for (merchants, shards) in [(1, 1), (1, 2), (4, 1), (4, 2)] {
        report(
            &format!("tally ingest: {merchants} merchant(s), {shards} shard(s)"),
            ingest(&dir, commands, merchants, shards, ResultsWritten::All).0,
            "commands",
        );
    }
    report(
        "tally ingest: 1 merchant, 1 shard, rejected results only",
        ingest(&dir, commands, 1, 1, ResultsWritten::Rejected).0,
        "commands",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn report(what: &str, per_second: f64, unit: &str) {
    println!("{what:<52} {per_second:>14.0} {unit}");
}

/// Repeats `step` for about `SPAN` and returns steps per second.
fn rate(mut step: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut steps = 0u64;
    while started.elapsed() < SPAN {
        step();
        steps += 1;
    }
    steps as f64 / started.elapsed().as_secs_f64()
}

fn fsyncs(dir: &Path) -> f64 {
    let mut file = std::fs::File::create(dir.join("fsync.bin")).expect("file");
    let page = [7u8; 4096];
    rate(|| {
        file.write_all(&page).expect("write");
        file.sync_data().expect("fsync");
    })
}

/// Durable commits of `keys` keys of `bytes` bytes each; returns keys per second.
fn redb_commits(dir: &Path, keys: usize, bytes: usize) -> f64 {
    let path = dir.join(format!("redb-{keys}-{bytes}.redb"));
    let _ = std::fs::remove_file(&path);
    let db = Database::create(&path).expect("database");
    let value = vec![42u8; bytes];
    let mut next = 0u64;
    let commits = rate(|| {
        let mut write = db.begin_write().expect("write");
        write.set_durability(Durability::Immediate);
        {
            let mut table = write.open_table(TABLE).expect("table");
            for _ in 0..keys {
                // Scattered keys, as order ids would be.
                next = next.wrapping_add(0x9E37_79B9_7F4A_7C15);
                table.insert(next, value.as_slice()).expect("insert");
            }
        }
        write.commit().expect("commit");
    });
    commits * keys as f64
}

/// `tally ingest` of the demo traffic of `merchants` merchants (100,000 members in all, half
/// of the merchants on each of two shards), interleaved, with `shards` shards; returns
/// commands per second and the CPU seconds (user and system) of the thread that ran the
/// engine (with one shard, the one that applied every command).
fn ingest(
    dir: &Path,
    count: usize,
    merchants: usize,
    shards: usize,
    written: ResultsWritten,
) -> (f64, f64) {
    let data = dir.join("ingest");
    let _ = std::fs::remove_dir_all(&data);
    let names = tally_benches::balanced_names(merchants);
    let config = WorkloadConfig::demo(100_000 / merchants as u64);
    let mut input = Vec::with_capacity(count * COMMAND_BYTES);
    for command in interleaved(&names, &config).take(count) {
        input.extend_from_slice(command.to_json_line().as_bytes());
        input.push(b'\n');
    }
    let programs: Vec<String> = names.iter().map(|name| demo_program_of(name)).collect();
    let (mut engine, _) = Engine::open(&data, Clock::Event).expect("engine");
    // The steady state: the checkpoint taken when an input ends is measured by the
    // `recovery` example.
    engine.set_checkpoint_every(0);
    engine.set_shards(shards);
    engine.set_results_written(written);
    engine.install_programs(&programs).expect("program");
    let mut results = std::io::sink();
    let cpu_s = || {
        let (user, system) = tally_benches::thread_cpu_s();
        user + system
    };
    let cpu_before = cpu_s();
    let started = Instant::now();
    engine
        .run(std::io::Cursor::new(input), &mut results)
        .expect("ingest");
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let engine_cpu_s = cpu_s() - cpu_before;
    std::mem::forget(engine);
    (rate, engine_cpu_s)
}
