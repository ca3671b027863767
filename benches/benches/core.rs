//! Purchases applied by the ledger core on one thread: 5-line baskets, the demo program
//! (11 order rules, 5 tiers), 1,000,000 members drawn Zipf-distributed (exponent 1.1).
//!
//! Run: `cargo bench -p tally-benches --bench core`. Reports purchases/s (criterion's
//! "thrpt" in elements/s). Commands are generated before measuring, so only applying them
//! is timed.

use std::cell::RefCell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_benches::{commands, populated, purchases};
use tally_engine::workload::Workload;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MEMBERS: u64 = 1_000_000;
/// Commands generated up front; more are made (untimed) if a run needs them.
const POOL: u64 = 2_000_000;

fn apply_purchases(c: &mut Criterion) {
    let config = purchases(MEMBERS);
    let replayer = RefCell::new(populated(MEMBERS, &config));
    let mut workload = Workload::new(config);
    let pool = RefCell::new(commands(&mut workload, POOL));
    let next = RefCell::new(0usize);
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));
    group.bench_function("purchase_5_lines_1m_members_zipf", |b| {
        b.iter_custom(|iters| {
            let mut pool = pool.borrow_mut();
            let mut next = next.borrow_mut();
            if *next + iters as usize > pool.len() {
                pool.extend(commands(&mut workload, iters));
            }
            let batch = &pool[*next..*next + iters as usize];
            *next += iters as usize;
            let mut replayer = replayer.borrow_mut();
            let started = Instant::now();
            for command in batch {
                replayer.apply(command, &mut |_| {});
            }
            started.elapsed()
        })
    });
    group.finish();
    let stats = &replayer.borrow().stats;
    assert_eq!(
        stats.rejected, 0,
        "benchmark purchases must all apply: {stats:?}"
    );
}

criterion_group!(benches, apply_purchases);
criterion_main!(benches);
