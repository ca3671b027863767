//! Applies purchases to a populated ledger and prints the rate, outside criterion: handy
//! under a profiler (`perf record -D <ms after set-up>`).
//! `cargo run --release -p tally-benches --example apply_rate -- [members] [purchases] [promotions]`
//! (with a third number: the demo program with that many generated promotions instead of its own).
// Floats here are rates for display, never money.
#![allow(clippy::float_arithmetic)]

use std::time::Instant;

use tally_benches::{
    commands, demo_program_with_promotions, memory_mb, number_args, populated, populated_with,
    purchases, thread_cpu_s,
};
use tally_engine::replay::Replayer;
use tally_engine::workload::Workload;
use tally_protocol::Command;

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

fn main() {
    tally_engine::allocator::tune();
    let mut args = number_args::<u64>();
    let members = args.next().unwrap_or(1_000_000);
    let count = args.next().unwrap_or(1_000_000);
    let promotions = args.next();
    let config = purchases(members);
    let set_up = Instant::now();
    let mut replayer = match promotions {
        Some(n) => populated_with(&demo_program_with_promotions(n as usize), members, &config),
        None => populated(members, &config),
    };
    let batch = commands(&mut Workload::new(config), count);
    eprintln!("set-up {:.1} s", set_up.elapsed().as_secs_f64());
    let (user_before, system_before) = thread_cpu_s();
    let started = Instant::now();
    apply_all(&mut replayer, &batch);
    let elapsed = started.elapsed();
    let (user_after, system_after) = thread_cpu_s();
    assert_eq!(replayer.stats.rejected, 0);
    println!(
        "{count} purchases in {:.3} s: {:.0} purchases/s ({:.2} s user, {:.2} s system)",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64(),
        user_after - user_before,
        system_after - system_before
    );
}

/// The measured loop, kept out of line so a profiler can collect it alone
/// (`valgrind --tool=callgrind --toggle-collect='*apply_all*'`).
#[inline(never)]
fn apply_all(replayer: &mut Replayer, batch: &[Command]) {
    let mut chunk_started = Instant::now();
    for (i, command) in batch.iter().enumerate() {
        replayer.apply(command, &mut |_| {});
        if (i + 1) % 50_000 == 0 {
            eprintln!(
                "  {:>8}: {:.0}/s, resident {} MB",
                i + 1,
                50_000.0 / chunk_started.elapsed().as_secs_f64(),
                memory_mb("VmRSS")
            );
            chunk_started = Instant::now();
        }
    }
}
