//! The apply stage alone, in memory: the demo traffic of several merchants, interleaved, in
//! groups of 4,096, applied one command after the other (1 shard) or on 2.. shards. Nothing
//! else runs, so this shows what shards give where a core is free for them (`tally ingest`
//! keeps its other threads busy too: see `storage_baseline`). One configuration per process:
//! the state grows into fresh memory, which a second run in the same process would not see
//! the same way. Alternate them from the shell.
//! `cargo run --release -p tally-benches --example shard_apply -- [merchants] [commands] [shards]`
// Floats here are rates for display, never money.
#![allow(clippy::float_arithmetic)]

use std::time::Instant;

use tally_benches::{balanced_names, number_args};
use tally_engine::core::Ledger;
use tally_engine::ingest::MAX_GROUP_COMMANDS;
use tally_engine::shards::{step, Item, Shards};
use tally_engine::workload::{demo_program_of, interleaved, WorkloadConfig};
use tally_protocol::Command;

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

fn main() {
    tally_engine::allocator::tune();
    let mut args = number_args::<usize>();
    let merchants = args.next().unwrap_or(4);
    let count = args.next().unwrap_or(400_000);
    let shards = args.next().unwrap_or(2);
    let names = balanced_names(merchants);
    let config = WorkloadConfig::demo(100_000 / merchants as u64);
    let commands: Vec<Command> = interleaved(&names, &config).take(count).collect();
    let two = Shards::new(2);
    let on_shard_0 = names.iter().filter(|n| two.shard_of(n) == 0).count();
    println!(
        "{merchants} merchants ({on_shard_0} on shard 0 of 2), {count} commands in groups of {MAX_GROUP_COMMANDS}"
    );
    let rate = apply_rate(&names, &commands, shards);
    println!("{shards} shard(s): {rate:>9.0} commands/s");
}

fn apply_rate(names: &[String], commands: &[Command], shards: usize) -> f64 {
    let start = commands[0].at;
    let mut ledger = Ledger::new();
    for name in names {
        ledger
            .install_program(&demo_program_of(name), start)
            .expect("program");
    }
    let mut pool = Shards::new(shards);
    let started = Instant::now();
    for group in commands.chunks(MAX_GROUP_COMMANDS) {
        let items = group
            .iter()
            .map(|command| Item::new(command.clone(), command.at.max(start), None));
        if shards == 1 {
            for item in items {
                step(&mut ledger, item);
            }
        } else {
            pool.apply(&mut ledger, items.collect());
        }
        // The committer takes each group's entries.
        drop(ledger.take_entries());
    }
    let rate = commands.len() as f64 / started.elapsed().as_secs_f64();
    // Freeing the state takes long and is not what is measured.
    std::mem::forget(ledger);
    rate
}
