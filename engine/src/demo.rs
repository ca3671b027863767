//! `tally demo`: the whole product in one command. Part of the `tally` binary (a module of
//! `main.rs`, not of the `tally_engine` crate).
//!
//! It starts `tally serve`'s server in this process on 127.0.0.1 (an ephemeral port) with a
//! temporary data directory, a development CA and the demo program; drives it with the load
//! generator's POS fleet over real QUIC at a constant rate; reads the busiest members'
//! balances and tiers back over the network and verifies every touched member against what
//! was acknowledged; shuts the server down cleanly; and recovers the data directory to print
//! the tiers and the liability. `--offline` keeps the earlier demo: the core alone on
//! generated commands, no disk, no network.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tally_engine::core::Ledger;
use tally_engine::ingest::{Clock, Engine};
use tally_engine::server::certs::ensure_development_certs;
use tally_engine::server::{Limits, ServerOptions};
use tally_engine::workload::DEMO_PROGRAM;
use tally_loadgen::{CaCredentials, Fleet, FleetConfig, StepConfig};

/// What the live demo runs.
pub struct LiveDemo {
    pub members: u64,
    pub rate_per_s: u64,
    pub duration: Duration,
    pub batch: usize,
}

/// A temporary data directory, removed when the demo ends (also on an error).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("tally-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn live(demo: &LiveDemo) -> Result<()> {
    let data = TempDir::new()?;
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let certs = ensure_development_certs(&data.0, &names)?;
    let (mut engine, _) = Engine::open(&data.0, Clock::Wall)?;
    engine.install_programs(&[DEMO_PROGRAM.to_string()])?;
    let options = ServerOptions {
        listen: "127.0.0.1:0".parse().expect("an address"),
        metrics: None,
        limits: Limits::default(),
        certs: certs.paths.clone(),
        handle_signals: false,
    };
    let running = tally_engine::server::start(engine, options)?;
    println!(
        "tally demo: an engine on {} (data in {}, durable: every answer waits for its fsync), the demo program;\n\
         a coffee chain's 16 terminals (4 stores) and an operator, each on its own QUIC connection with its own certificate,\n\
         send {} commands/s for {} s in frames of {}, {} members (Zipf)\n",
        running.address,
        data.0.display(),
        demo.rate_per_s,
        demo.duration.as_secs(),
        demo.batch,
        demo.members
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let driven = runtime.block_on(drive(demo, running.address, &data.0));
    let summary = running.shutdown()?;
    driven?;
    println!(
        "\nserver stopped cleanly: {} connections, {} requests, {} commands; log committed and checkpointed",
        summary.connections, summary.requests, summary.commands
    );
    let (engine, recovery) = Engine::open(&data.0, Clock::Event)?;
    println!(
        "recovered from its data directory in {:.2} s: {} members, state digest {:032x}",
        recovery.elapsed.as_secs_f64(),
        recovery.members,
        recovery.digest
    );
    print_tiers_and_liability(engine.ledger());
    Ok(())
}

async fn drive(demo: &LiveDemo, server: std::net::SocketAddr, data: &Path) -> Result<()> {
    let credentials = CaCredentials::load(data)?;
    let config = FleetConfig::demo(demo.members);
    let fleet = Fleet::connect(config, server, &credentials).await?;
    let step = StepConfig {
        rate_per_s: demo.rate_per_s,
        duration: demo.duration,
        warmup: Duration::from_secs(1).min(demo.duration / 4),
        batch: demo.batch,
        streams: 32,
        progress: true,
    };
    let figures = fleet.step(&step).await;
    print!("{}", figures.table());
    let verify = fleet.verify().await?;
    print!("{}", verify.text());
    let cards = tally_loadgen::run::busiest_cards(fleet.config(), 5);
    let read = fleet.read_balances("demo", &cards).await?;
    println!("\nthe busiest members, read back over the network (balance queries):");
    println!(
        "  {:<24} {:>8} {:>9} {:>8} {:>6} {:>9}  tier",
        "card", "points", "available", "pending", "held", "credit"
    );
    for (card, found) in read {
        match found {
            Some((b, tier)) => println!(
                "  {card:<24} {:>8} {:>9} {:>8} {:>6} {:>9}  {}",
                b.points,
                b.available,
                b.pending,
                b.held,
                b.credit,
                tier.unwrap_or_default()
            ),
            None => println!("  {card:<24} (not a member yet)"),
        }
    }
    fleet.close().await;
    anyhow::ensure!(
        verify.passed(),
        "balances read back differ from the acknowledged results"
    );
    Ok(())
}

/// Members by tier and what the merchant owes: the points outstanding at their value, and
/// store credit.
pub fn print_tiers_and_liability(ledger: &Ledger) {
    let Some(merchant) = ledger.merchant("demo") else {
        return;
    };
    let program = merchant.program();
    let mut by_tier = std::collections::BTreeMap::new();
    let (mut outstanding, mut pending, mut credit) = (0i64, 0i64, 0i64);
    for member in &merchant.members {
        *by_tier.entry(member.tier).or_insert(0u64) += 1;
        outstanding += member.points;
        pending += member.pending_points;
        credit += member.credit_minor;
    }
    println!("\ntiers:");
    for (tier, count) in &by_tier {
        println!(
            "  {:<16} {count}",
            program.tier_id(*tier).unwrap_or_else(|| "(none)".into())
        );
    }
    let liability = tally_engine::money::points_value_minor(
        outstanding,
        program.point_value_micro,
        program.minor_units,
    );
    println!(
        "\nliability: {outstanding} points outstanding ({pending} pending) = {} {}, plus {} {} store credit",
        tally_engine::money::from_minor(liability, program.minor_units),
        program.currency,
        tally_engine::money::from_minor(credit, program.minor_units),
        program.currency
    );
}
