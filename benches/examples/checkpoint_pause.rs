//! How long taking a checkpoint pauses the engine: the state of a data directory serialised
//! as `checkpoint::encode` does it on the engine thread, three times.
//!
//! `cargo run --release -p tally-benches --example checkpoint_pause -- DIR`

use std::time::Instant;

use tally_engine::checkpoint;
use tally_engine::ingest::{Clock, Engine};

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

fn main() {
    tally_engine::allocator::tune();
    let dir = std::env::args()
        .nth(1)
        .expect("usage: checkpoint_pause DIR");
    let (engine, recovery) = Engine::open(std::path::Path::new(&dir), Clock::Event).expect("opens");
    println!("{recovery:?}");
    let mut buffers = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let encoded = checkpoint::encode(engine.ledger(), 1, None, buffers);
        println!(
            "{} MB serialised in {} ms",
            encoded.file_bytes() >> 20,
            started.elapsed().as_millis()
        );
        buffers = encoded.into_buffers();
    }
}
