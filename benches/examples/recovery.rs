//! Recovery time of the durable engine: a data directory holding `members` enrolled members
//! (each with a phone, a card and a birthday) and `purchases` purchases on them, recovered
//! once from its checkpoint and once from the whole log (checkpoint removed); after the first,
//! a snapshot of every member to Parquet and to CSV.
//!
//! `cargo run --release -p tally-benches --example recovery -- DIR [members] [purchases]`

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use tally_engine::ingest::{Clock, Engine, Recovery};
use tally_engine::snapshot::{write, Format};
use tally_engine::workload::{card_of_rank, Workload, WorkloadConfig, DEMO_PROGRAM};

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

fn main() {
    tally_engine::allocator::tune();
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: recovery DIR [members] [purchases]");
    let members: u64 = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("members"));
    let purchases: usize = args
        .next()
        .map_or(1_000_000, |a| a.parse().expect("purchases"));
    let data = Path::new(&dir).join("recovery");
    let _ = std::fs::remove_dir_all(&data);

    let input = commands(members, purchases);
    let (mut engine, _) = Engine::open(&data, Clock::Event).expect("engine opens");
    engine
        .install_programs(&[DEMO_PROGRAM.to_string()])
        .expect("program");
    let started = Instant::now();
    engine
        .run(std::io::Cursor::new(input), &mut std::io::sink())
        .expect("ingest");
    println!(
        "ingested {} enrolments and {purchases} purchases, with a final checkpoint, in {:.1} s",
        members,
        started.elapsed().as_secs_f64()
    );
    let written = engine.ledger().digest();
    // Freeing millions of members takes seconds; the benchmark is about what comes next.
    std::mem::forget(engine.close().expect("closes"));

    let checkpoint_bytes = std::fs::metadata(data.join("checkpoint")).map_or(0, |m| m.len());
    let from_checkpoint = recover(&data, written, |engine| {
        for name in ["snapshot.parquet", "snapshot.csv"] {
            let out = Path::new(&dir).join(name);
            let started = Instant::now();
            let rows = write(
                engine.ledger().snapshot_blocks(None),
                engine.last_batch(),
                Format::of_path(&out),
                &out,
            )
            .expect("snapshot written");
            println!(
                "snapshot of {rows} members to {name}: {:.2} s, {} MB",
                started.elapsed().as_secs_f64(),
                std::fs::metadata(&out).map_or(0, |m| m.len()) >> 20
            );
            let _ = std::fs::remove_file(out);
        }
    });
    println!(
        "from the checkpoint ({} MB): {}",
        checkpoint_bytes >> 20,
        describe(&from_checkpoint)
    );
    if std::env::var_os("TALLY_KEEP_CHECKPOINT").is_some() {
        // Leave the data directory for profiling a recovery (`tally ingest --input /dev/null`).
        return;
    }
    std::fs::remove_file(data.join("checkpoint")).expect("checkpoint removed");
    // Without the checkpoint, the log must still hold everything: rebuild it uncompacted.
    let _ = std::fs::remove_dir_all(&data);
    let (mut engine, _) = Engine::open(&data, Clock::Event).expect("engine opens");
    engine.set_checkpoint_every(0);
    engine
        .install_programs(&[DEMO_PROGRAM.to_string()])
        .expect("program");
    engine
        .run(
            std::io::Cursor::new(commands(members, purchases)),
            &mut std::io::sink(),
        )
        .expect("ingest");
    std::mem::forget(engine.close().expect("closes"));
    let from_log = recover(&data, written, |_| ());
    println!("from the whole log: {}", describe(&from_log));
}

fn recover(data: &Path, expected_digest: u128, then: impl FnOnce(&Engine)) -> Recovery {
    let (engine, recovery) = Engine::open(data, Clock::Event).expect("recovers");
    assert_eq!(
        recovery.digest, expected_digest,
        "recovered a different state"
    );
    then(&engine);
    std::mem::forget(engine.close().expect("closes"));
    recovery
}

fn describe(recovery: &Recovery) -> String {
    format!(
        "{} members in {:.2} s ({} commands replayed from the log)",
        recovery.members,
        recovery.elapsed.as_secs_f64(),
        recovery.commands
    )
}

/// Enrolments of every member, then Zipf-distributed 5-line purchases on them.
fn commands(members: u64, purchases: usize) -> Vec<u8> {
    let mut input = Vec::with_capacity(members as usize * 200 + purchases * 400);
    for rank in 1..=members {
        let card = card_of_rank(rank, members);
        writeln!(
            input,
            r#"{{"merchant":"demo","terminal":"signup","txn":"{rank}","at":"2026-01-05T11:00:00Z","enroll":{{"card":"C{card:010}","phone":"+1555{rank:07}","birthday":"{:02}-{:02}"}}}}"#,
            rank % 12 + 1,
            rank % 28 + 1
        )
        .expect("in memory");
    }
    for command in Workload::new(WorkloadConfig::purchases_only(members)).take(purchases) {
        input.extend_from_slice(command.to_json_line().as_bytes());
        input.push(b'\n');
    }
    input
}
