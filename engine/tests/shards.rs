//! Shards: the same commands give the same answers, state, log and entry numbers whatever
//! the number of shards, and the log they write recovers to the same state.

use std::io::Cursor;
use std::path::PathBuf;

use tally_engine::ingest::{Clock, Engine};
use tally_engine::log::LoggedEntry;
use tally_engine::replay::Replayer;
use tally_engine::workload::{demo_program_of, Workload, WorkloadConfig};

const MERCHANTS: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];
const PER_MERCHANT: usize = 1_500;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tally-shards-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every merchant's demo traffic, interleaved; then some of it again (duplicates), a line
/// that is not a command, a conflicting reuse of a key, a statement, and a merchant whose
/// program arrives in the middle of the stream.
fn input() -> String {
    let mut streams: Vec<Vec<String>> = MERCHANTS
        .iter()
        .enumerate()
        .map(|(i, merchant)| {
            // Ten minutes between a merchant's commands: ten days in all, so pending points
            // mature and days start, and the engine ticks.
            let config = WorkloadConfig {
                merchant: merchant.to_string(),
                seed: 7 + i as u64,
                interval_ms: 10 * 60 * 1000,
                ..WorkloadConfig::demo(200)
            };
            Workload::new(config)
                .take(PER_MERCHANT)
                .map(|c| c.to_json_line())
                .collect()
        })
        .collect();
    let mut lines = Vec::new();
    for index in 0..PER_MERCHANT {
        for (m, stream) in streams.iter_mut().enumerate() {
            // The last merchant starts late, with its program loaded by an operator.
            if m == MERCHANTS.len() - 1 && index == PER_MERCHANT / 2 {
                lines.push(load_program_line(MERCHANTS[m]));
            }
            if m < MERCHANTS.len() - 1 || index >= PER_MERCHANT / 2 {
                lines.push(std::mem::take(&mut stream[index]));
            }
        }
        if index == PER_MERCHANT / 3 {
            lines.push("{not a command".to_string());
            let resent: Vec<String> = lines.iter().step_by(7).cloned().collect();
            lines.extend(resent);
            let purchase = lines
                .iter()
                .find(|line| line.contains("\"sku\":\"") && !line.contains("\"pay\""))
                .expect("a purchase that applies");
            lines.push(purchase.replacen("\"sku\":\"", "\"sku\":\"X", 1));
            lines.push(statement_line());
        }
    }
    lines.join("\n") + "\n"
}

fn load_program_line(merchant: &str) -> String {
    serde_json::json!({
        "merchant": merchant,
        "admin": "ops",
        "txn": format!("program-{merchant}"),
        "at": start(),
        "load_program": {"program": demo_program_of(merchant)},
    })
    .to_string()
}

fn statement_line() -> String {
    let card = format!("C{:010}", tally_engine::workload::card_of_rank(1, 200));
    serde_json::json!({
        "merchant": MERCHANTS[0],
        "admin": "ops",
        "txn": "statement-1",
        "at": start(),
        "statement": {"member": {"card": card}, "page": 0, "per_page": 5},
    })
    .to_string()
}

fn start() -> String {
    WorkloadConfig::demo(1).start.to_rfc3339()
}

struct Outcome {
    results: String,
    digest: u128,
    entries: Vec<LoggedEntry>,
    recovered_digest: u128,
    sharded_groups: u64,
}

fn ingest(shards: usize, input: &str) -> Outcome {
    let scratch = Scratch::new(&format!("{shards}"));
    let (mut engine, _) = Engine::open(&scratch.0, Clock::Event).expect("opened");
    engine.set_shards(shards);
    let programs: Vec<String> = MERCHANTS[..MERCHANTS.len() - 1]
        .iter()
        .map(|m| demo_program_of(m))
        .collect();
    engine.install_programs(&programs).expect("installed");
    let mut results = Vec::new();
    engine
        .run(Cursor::new(input.as_bytes().to_vec()), &mut results)
        .expect("ingested");
    let digest = engine.ledger().digest();
    let seqs: Vec<u64> = (1..=engine.ledger().last_entry_seq()).collect();
    let entries = engine.log().entries(&seqs).expect("every entry is logged");
    let sharded_groups = engine.sharded_groups();
    engine.close().expect("closed");
    let (_, recovery) = Engine::open(&scratch.0, Clock::Event).expect("recovered");
    Outcome {
        results: String::from_utf8(results).expect("UTF-8"),
        digest,
        entries,
        recovered_digest: recovery.digest,
        sharded_groups,
    }
}

#[test]
fn any_number_of_shards_gives_the_answers_state_and_log_of_one() {
    let input = input();
    let one = ingest(1, &input);
    assert_eq!(
        one.sharded_groups, 0,
        "one shard applies on the engine's thread"
    );
    assert!(
        one.results.contains("\"duplicate\""),
        "duplicates are exercised"
    );
    assert!(
        one.results.contains("\"conflict\""),
        "a conflict is exercised"
    );
    assert!(one.entries.len() > 10_000, "{} entries", one.entries.len());
    assert!(
        one.entries.iter().any(|e| e.merchant == MERCHANTS[4]),
        "the merchant that started late has entries"
    );
    for shards in [2, 3, 5] {
        let many = ingest(shards, &input);
        assert!(
            many.sharded_groups > 0,
            "{shards} shards: some groups were sharded"
        );
        assert!(
            many.results == one.results,
            "{shards} shards: the answers differ from one shard's"
        );
        assert_eq!(
            many.digest, one.digest,
            "{shards} shards: the state differs"
        );
        assert!(
            many.entries == one.entries,
            "{shards} shards: the logged entries differ"
        );
        assert_eq!(
            many.recovered_digest, many.digest,
            "{shards} shards: recovery"
        );
    }
}

/// `tally replay`'s core: every result (ticks included), the balances and the digest are
/// those of one shard.
#[test]
fn a_replay_on_shards_answers_and_ends_as_one_on_one_thread() {
    let input = input();
    let replay = |shards: usize| {
        let programs: Vec<String> = MERCHANTS[..MERCHANTS.len() - 1]
            .iter()
            .map(|m| demo_program_of(m))
            .collect();
        let mut replayer = Replayer::new(programs).expect("programs");
        replayer.set_shards(shards);
        let mut results = Vec::new();
        replayer
            .run(Cursor::new(input.as_bytes()), &mut |result| {
                results.push(result.to_json_line())
            })
            .expect("replayed");
        let mut balances = Vec::new();
        replayer.write_balances(&mut balances).expect("balances");
        (results, balances, replayer.ledger().digest())
    };
    let one = replay(1);
    assert!(
        one.0.iter().any(|r| r.contains("\"tick\"")),
        "ticks are exercised"
    );
    for shards in [2, 3] {
        let many = replay(shards);
        assert!(many.0 == one.0, "{shards} shards: the results differ");
        assert!(many.1 == one.1, "{shards} shards: the balances differ");
        assert_eq!(many.2, one.2, "{shards} shards: the state differs");
    }
}
