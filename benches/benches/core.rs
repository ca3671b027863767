//! Purchases applied by the ledger core on one thread: 5-line baskets, the demo program
//! (11 order rules, 5 tiers, 9 promotions), 1,000,000 members drawn Zipf-distributed
//! (exponent 1.1); and the same purchases with 0, 20 and 1,000 active promotions.
//!
//! Run: `cargo bench -p tally-benches --bench core`. Reports purchases/s (criterion's
//! "thrpt" in elements/s). Commands are generated before measuring, so only applying them
//! is timed; they are applied as the engine applies a group (`Replayer::apply_all`,
//! warming a few commands ahead).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tally_benches::{commands, demo_program_with_promotions, populated, populated_with, purchases};
use tally_engine::replay::Replayer;
use tally_engine::workload::Workload;

#[global_allocator]
static ALLOCATOR: tally_engine::allocator::Mimalloc = tally_engine::allocator::Mimalloc;

const MEMBERS: u64 = 1_000_000;
/// Commands generated up front; more are made (untimed) if a run needs them.
const POOL: u64 = 2_000_000;

/// A ledger and its purchases: commands are made ahead (untimed), applying them is timed.
struct Purchases {
    replayer: Replayer,
    workload: Workload,
    pool: Vec<tally_protocol::Command>,
    next: usize,
}

impl Purchases {
    fn new(replayer: Replayer, mut workload: Workload, pool: u64) -> Purchases {
        let pool = commands(&mut workload, pool);
        Purchases {
            replayer,
            workload,
            pool,
            next: 0,
        }
    }

    /// Applies the next `iters` purchases as one group and returns how long that took.
    fn timed(&mut self, iters: u64) -> Duration {
        if self.next + iters as usize > self.pool.len() {
            self.pool.extend(commands(&mut self.workload, iters));
        }
        let batch = &self.pool[self.next..self.next + iters as usize];
        self.next += iters as usize;
        let started = Instant::now();
        self.replayer.apply_all(batch, &mut |_| {});
        started.elapsed()
    }

    fn assert_all_applied(&self) {
        let stats = &self.replayer.stats;
        assert_eq!(
            stats.rejected, 0,
            "benchmark purchases must all apply: {stats:?}"
        );
    }
}

fn apply_purchases(c: &mut Criterion) {
    // The first benchmark, before criterion starts any thread: the binaries' allocator setting.
    tally_engine::allocator::tune();
    let config = purchases(MEMBERS);
    let replayer = populated(MEMBERS, &config);
    let mut bench = Purchases::new(replayer, Workload::new(config), POOL);
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));
    group.bench_function("purchase_5_lines_1m_members_zipf", |b| {
        b.iter_custom(|iters| bench.timed(iters))
    });
    group.finish();
    bench.assert_all_applied();
}

/// Members of the promotion comparison: fewer than above, so three ledgers fit and set up fast.
const PROMOTION_MEMBERS: u64 = 100_000;

/// The same purchases against the demo program with 0, 20 and 1,000 active promotions: an
/// order looks only at the promotions its codes, member, SKUs and categories can trigger, so
/// the cost should barely grow with the number of promotions.
fn apply_purchases_with_promotions(c: &mut Criterion) {
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(6));
    for count in [0, 20, 1_000] {
        let config = purchases(PROMOTION_MEMBERS);
        let program = demo_program_with_promotions(count);
        let replayer = populated_with(&program, PROMOTION_MEMBERS, &config);
        let mut bench = Purchases::new(replayer, Workload::new(config), POOL / 4);
        let name = format!("purchase_5_lines_100k_members_{count}_promotions");
        group.bench_function(name.as_str(), |b| b.iter_custom(|iters| bench.timed(iters)));
        bench.assert_all_applied();
    }
    group.finish();
}

criterion_group!(benches, apply_purchases, apply_purchases_with_promotions);
criterion_main!(benches);
