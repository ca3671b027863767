//! The Parquet writer alone: `ROWS` synthetic member rows (card aliases, small balances,
//! one member in seven with a tier), built first in blocks as the engine hands them over,
//! then written by `tally_engine::snapshot::write` on one thread: what a snapshot costs its
//! reader, without the engine.
//!
//! `cargo run --release -p tally-benches --example parquet_rate -- [ROWS] [FILE]`

use std::time::Instant;

use tally_engine::snapshot::{write, Format};
use tally_protocol::{RowBlock, RowNumbers};

/// Rows per block, as the engine's chunks.
const BLOCK_ROWS: u64 = 8192;

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

fn main() {
    tally_engine::allocator::tune();
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().map_or(10_000_000, |a| a.parse().expect("rows"));
    let out = args.next().unwrap_or_else(|| "parquet-rate.parquet".into());
    // Blocks as the engine hands them over, built here: the writer's time alone is timed.
    let block_of = |first: u64| {
        let mut block = RowBlock::with_capacity(BLOCK_ROWS as usize);
        for member in first..(first + BLOCK_ROWS).min(count + 1) {
            let numbers = RowNumbers {
                member,
                points: (member % 1000) as i64,
                available: (member % 1000) as i64,
                minor_units: 2,
                expiring: [0, 0, (member % 13) as i64],
                ..RowNumbers::default()
            };
            let tier = (member % 7 == 0).then_some("silver");
            block.push_with("demo", tier, numbers, |aliases| {
                aliases.push_str(&format!("card:C{member:010}"))
            });
        }
        block
    };
    let blocks: Vec<RowBlock> = (0..count.div_ceil(BLOCK_ROWS))
        .map(|index| block_of(1 + index * BLOCK_ROWS))
        .collect();
    let started = Instant::now();
    let written = write(
        blocks.into_iter(),
        Some(1),
        Format::Parquet,
        std::path::Path::new(&out),
    )
    .expect("written");
    let bytes = std::fs::metadata(&out).map_or(0, |m| m.len());
    println!(
        "{written} rows to {out} in {:.2} s ({} MB)",
        started.elapsed().as_secs_f64(),
        bytes >> 20
    );
}
