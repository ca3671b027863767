//! The load generator against a server in this process, over real QUIC on 127.0.0.1: a small
//! fleet of two merchants with a heavy retry mix runs for two seconds; every deliberate retry
//! must come back `duplicate`, nothing may go unanswered, and the balances read back must be
//! exactly what the acknowledged results add up to. Then one change behind the fleet's back
//! must be found. And `tally demo` end to end, short.

mod quic_support;

use std::time::Duration;

use quic_support::*;
use tally_engine::server::Limits;
use tally_loadgen::{CaCredentials, Fleet, FleetConfig, StepConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_with_retries_gets_duplicates_and_verifies_every_balance() {
    let server = TestServer::start("loadgen-fleet", Limits::default());
    let credentials = CaCredentials::load(&server.data.0).expect("the CA");
    let config = FleetConfig {
        merchants: vec!["demo".into(), "demo-2".into()],
        stores_per_merchant: 2,
        terminals_per_store: 2,
        retry_percent: 20,
        ..FleetConfig::demo(300)
    };
    let fleet = Fleet::connect(config, server.running().address, &credentials)
        .await
        .expect("the fleet connects");
    let step = StepConfig {
        rate_per_s: 1_000,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        batch: 4,
        streams: 8,
        progress: false,
    };
    let figures = fleet.step(&step).await;

    assert!(figures.commands_offered >= 1_900, "{}", figures.table());
    assert_eq!(figures.commands_answered, figures.commands_offered);
    assert_eq!(figures.error_commands, 0, "{}", figures.table());
    let retries = &figures.retries;
    assert!(retries.deliberate_sent >= 50, "{}", figures.table());
    assert_eq!(retries.deliberate_duplicate, retries.deliberate_sent);
    for kind in ["purchase", "return", "quote", "event", "adjust"] {
        let applied = figures.by_kind.get(kind).map_or(0, |c| c.applied);
        assert!(applied > 0, "no {kind} applied:\n{}", figures.table());
    }
    assert!(figures.latency_ms.p50 > 0.0 && figures.latency_ms.max >= figures.latency_ms.p99);

    let verified = fleet.verify().await.expect("members read back");
    assert!(verified.passed(), "{}", verified.text());
    assert!(verified.members_checked >= 100, "{}", verified.text());
    assert_eq!(verified.members_uncertain, 0);

    // A goodwill adjustment the fleet never saw: the read-back must differ for that member.
    let card = tally_loadgen::run::busiest_cards(fleet.config(), 1).remove(0);
    let ops = server.client(&admin(Some("demo"), "outsider")).await;
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let adjust = format!(
        r#"{{"merchant":"demo","admin":"outsider","txn":"a-1","at":"{at}","adjust":{{"member":{{"card":"{card}"}},"points":7,"reason":"goodwill"}}}}"#
    );
    assert_applied(&ops.send(command(&adjust)).await.expect("answered"));
    let verified = fleet.verify().await.expect("members read back");
    assert_eq!(verified.mismatched, 1, "{}", verified.text());
    assert_eq!(verified.first_mismatches[0].card, card);
    fleet.close().await;
}

#[test]
fn tally_demo_runs_the_product_end_to_end_and_shuts_down_cleanly() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "demo",
            "--duration",
            "2s",
            "--rate",
            "400",
            "--members",
            "2000",
        ])
        .output()
        .expect("tally demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "achieved",
        "p99",
        " 0 differ from the model",
        "read back over the network",
        "server stopped cleanly",
        "liability:",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}
