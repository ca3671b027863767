//! The front door's own work on one thread, without the network: validating and decoding a
//! request frame of 32 demo commands, and encoding the frame of their results. These are
//! what `tally serve` does per frame beside QUIC, TLS and the engine.
//!
//! Run: `cargo bench -p tally-benches --bench wire`. Reports commands/s ("thrpt").
// Floats here are sizes for display, never money.
#![allow(clippy::float_arithmetic)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_benches::{commands, populated};
use tally_engine::workload::{Workload, WorkloadConfig};
use tally_protocol::wire::{self, Frame, Limits};
use tally_protocol::CommandResult;

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

const MEMBERS: u64 = 100_000;
const FRAMES: usize = 100;
const PER_FRAME: usize = 32;

/// Request frames of the demo traffic, and the results the engine gave their commands.
fn frames() -> (Vec<Vec<u8>>, Vec<Vec<Arc<CommandResult>>>) {
    let config = WorkloadConfig::demo(MEMBERS);
    let mut replayer = populated(MEMBERS, &config);
    let all = commands(&mut Workload::new(config), (FRAMES * PER_FRAME) as u64);
    let mut requests = Vec::new();
    let mut answers = Vec::new();
    for (id, chunk) in all.chunks(PER_FRAME).enumerate() {
        let mut results = Vec::new();
        for command in chunk {
            replayer.apply(command, &mut |result| {
                results.push(Arc::new(result.clone()))
            });
        }
        requests.push(wire::encode_request(id as u64, chunk.to_vec()));
        answers.push(results);
    }
    (requests, answers)
}

fn front_door(c: &mut Criterion) {
    let (requests, answers) = frames();
    let request_bytes: usize = requests.iter().map(Vec::len).sum();
    let result_bytes: usize = answers
        .iter()
        .map(|results| wire::encode_results(0, results.clone()).len())
        .sum();
    let count = (FRAMES * PER_FRAME) as f64;
    println!(
        "bytes a command: request {:.0}, results {:.0}",
        request_bytes as f64 / count,
        result_bytes as f64 / count
    );
    let limits = Limits::default();
    let mut group = c.benchmark_group("wire");
    group.throughput(Throughput::Elements(PER_FRAME as u64));
    let mut next = 0;
    group.bench_function("decode_request_32_demo_commands", |b| {
        b.iter(|| {
            next = (next + 1) % requests.len();
            match wire::decode_frame(&requests[next], &limits) {
                Ok(Frame::Request { commands, .. }) => commands.len(),
                other => panic!("a request frame decodes: {other:?}"),
            }
        })
    });
    group.bench_function("encode_results_32_demo_commands", |b| {
        b.iter(|| {
            next = (next + 1) % answers.len();
            wire::encode_results(next as u64, answers[next].clone()).len()
        })
    });
    group.finish();
}

criterion_group!(benches, front_door);
criterion_main!(benches);
