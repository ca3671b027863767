//! A merchant growing to millions of members, a few at a time: the time of every command, to
//! show the longest one. A vector of members doubles in one command (past 2^21 members it
//! copies 770 MB into fresh memory), and every command of the merchant waits for it.
//! `cargo run --release -p tally-benches --example member_growth -- [members] [cards per command]`
// Floats here are durations for display, never money.
#![allow(clippy::float_arithmetic)]

use std::time::{Duration, Instant};

use tally_benches::{issue_cards, memory_mb, number_args};
use tally_engine::replay::Replayer;
use tally_engine::workload::{WorkloadConfig, DEMO_PROGRAM};

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

fn main() {
    tally_engine::allocator::tune();
    let mut args = number_args::<u64>();
    let members = args.next().unwrap_or(2_500_000);
    let per_command = args.next().unwrap_or(1_000);
    let config = WorkloadConfig::purchases_only(members);
    let mut replayer = Replayer::new(vec![DEMO_PROGRAM.to_string()]).expect("the program is valid");
    let mut times: Vec<(Duration, u64)> = Vec::new();
    let started = Instant::now();
    let mut issued = 0;
    while issued < members {
        let count = per_command.min(members - issued);
        let command = issue_cards(
            &config.merchant,
            times.len() as u64 + 1,
            count as u32,
            config.start,
        );
        let command_started = Instant::now();
        replayer.apply(&command, &mut |result| {
            assert!(result.applied().is_some(), "{result:?}")
        });
        issued += count;
        times.push((command_started.elapsed(), issued));
    }
    let total = started.elapsed();
    let mut sorted = times.clone();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{members} members in {} commands of {per_command} cards: {:.2} s; median command \
         {:.2} ms; resident {} MB",
        times.len(),
        total.as_secs_f64(),
        ms(sorted[sorted.len() / 2].0),
        memory_mb("VmRSS")
    );
    for (took, after) in sorted.iter().rev().take(3) {
        println!(
            "  slow: {:.1} ms, the command reaching {after} members",
            ms(*took)
        );
    }
}
