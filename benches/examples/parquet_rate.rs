//! The Parquet writer alone: `ROWS` synthetic member rows (card aliases, small balances,
//! one member in seven with a tier) written by `tally_engine::snapshot::write`, on one
//! thread. What a snapshot costs its reader, without the engine.
//!
//! `cargo run --release -p tally-benches --example parquet_rate -- [ROWS] [FILE]`

use std::time::Instant;

use tally_engine::snapshot::{write, Format};
use tally_protocol::SnapshotRow;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tally_engine::allocator::tune();
    let mut args = std::env::args().skip(1);
    let count: u64 = args.next().map_or(10_000_000, |a| a.parse().expect("rows"));
    let out = args.next().unwrap_or_else(|| "parquet-rate.parquet".into());
    let rows = (1..=count).map(|member| SnapshotRow {
        merchant: "demo".to_string(),
        member,
        aliases: format!("card:C{member:010}"),
        points: (member % 1000) as i64,
        available: (member % 1000) as i64,
        pending: 0,
        held: 0,
        credit_minor: 0,
        credit_held_minor: 0,
        minor_units: 2,
        tier: (member % 7 == 0).then(|| "silver".to_string()),
        window_points_earned: 0,
        window_amount_spent_minor: 0,
        window_orders: 0,
        expiring: [0, 0, (member % 13) as i64],
    });
    let started = Instant::now();
    let written =
        write(rows, Some(1), Format::Parquet, std::path::Path::new(&out)).expect("written");
    let bytes = std::fs::metadata(&out).map_or(0, |m| m.len());
    println!(
        "{written} rows to {out} in {:.2} s ({} MB)",
        started.elapsed().as_secs_f64(),
        bytes >> 20
    );
}
