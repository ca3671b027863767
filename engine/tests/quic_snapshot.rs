//! A snapshot streamed from a running server over real QUIC on 127.0.0.1 while terminals
//! keep buying: its rows are the ledger at one position, exactly; only operators get one.

mod quic_support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parquet::file::reader::{FileReader, SerializedFileReader};
use quic_support::*;
use tally_client::Client;
use tally_engine::log::CommandLog;
use tally_engine::server::certs::Authority;
use tally_engine::server::Limits;
use tally_protocol::{
    Body, Command, IdemKey, Origin, Reason, SnapshotQuery, SnapshotRow, SnapshotRows, Wallet,
};

/// Members bought for before the snapshot; the snapshot streams them 16 rows at a time.
const MEMBERS: u64 = 600;
const ROWS_PER_CHUNK: u32 = 16;

fn purchase(card: u64, txn: u64, minute: u64) -> Command {
    command(&format!(
        r#"{{"merchant":"demo","terminal":"pos-1","txn":"{txn}","at":"2026-03-03T{:02}:{:02}:00Z","purchase":{{"member":{{"card":"C-{card}"}},"lines":[{{"sku":"LATTE","category":"coffee","qty":2,"unit_price":"4.50"}}],"total":"9.00"}}}}"#,
        10 + minute / 60,
        minute % 60
    ))
}

fn snapshot_command(merchant: &str, every_merchant: bool) -> Command {
    Command {
        merchant: merchant.into(),
        origin: Origin::Admin("ops".into()),
        key: IdemKey::Id(7),
        at: "2026-03-03T12:00:00Z".parse().unwrap(),
        program_version: None,
        body: Body::Snapshot(SnapshotQuery { every_merchant }),
    }
}

/// Purchases for random known members until told to stop; returns how many were applied.
async fn buy_until(client: Client, stop: Arc<AtomicBool>, next_txn: Arc<AtomicU64>) -> u64 {
    let mut applied = 0;
    // Bounded: a stop is always sent, and at most this many rounds are made anyway.
    for round in 0..20_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let txn = next_txn.fetch_add(1, Ordering::Relaxed);
        let card = (txn * 7919 + round) % MEMBERS;
        let result = client
            .send(purchase(card, txn, 90))
            .await
            .expect("answered");
        assert_applied(&result);
        applied += 1;
    }
    applied
}

/// The snapshot, read slowly so that the terminals' purchases land while it streams.
async fn slow_snapshot(ops: &Client) -> (Vec<SnapshotRows>, Arc<tally_protocol::CommandResult>) {
    let mut chunks = Vec::new();
    let result = ops
        .snapshot(snapshot_command("demo", false), |chunk| {
            chunks.push(chunk);
            std::thread::sleep(Duration::from_millis(3));
        })
        .await
        .expect("the snapshot streams");
    (chunks, result)
}

/// Per member id: points and credit (minor units) from the log's entries numbered up to
/// `last_seq` of merchant `demo`.
fn balances_from_entries(log: &CommandLog, last_seq: u64) -> BTreeMap<u64, (i64, i64)> {
    let mut balances: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    log.scan_entries(|entry| {
        if entry.merchant == "demo" && entry.seq <= last_seq {
            let balance = balances.entry(entry.member).or_default();
            match entry.wallet {
                Wallet::Points => balance.0 += entry.amount,
                Wallet::Credit => balance.1 += entry.amount,
            }
        }
    })
    .expect("entries read");
    balances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_during_purchases_equals_the_entries_up_to_its_position() {
    let limits = Limits {
        snapshot_rows_per_chunk: ROWS_PER_CHUNK,
        ..Limits::default()
    };
    let mut server = TestServer::start("quic-snapshot", limits);
    let pos = server.client(&terminal("demo", None, "pos-1")).await;
    let ops = server.client(&admin(None, "ops")).await;
    let batch: Vec<Command> = (0..MEMBERS).map(|m| purchase(m, m, m / 10)).collect();
    for chunk in batch.chunks(200) {
        pos.submit(chunk.to_vec())
            .await
            .expect("answered")
            .iter()
            .for_each(assert_applied);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let next_txn = Arc::new(AtomicU64::new(MEMBERS));
    let buyers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(buy_until(pos.clone(), stop.clone(), next_txn.clone())))
        .collect();
    // Some purchases first, so that the snapshot starts in the middle of the load.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (chunks, result) = slow_snapshot(&ops).await;
    stop.store(true, Ordering::Relaxed);
    let mut bought = 0;
    for buyer in buyers {
        bought += buyer.await.expect("the buyer does not panic");
    }
    assert_applied(&result);
    assert!(bought > 0, "purchases went on during the snapshot");

    let last = chunks.last().expect("at least one chunk");
    assert!(last.last, "the last chunk says so");
    let rows: Vec<SnapshotRow> = chunks
        .iter()
        .flat_map(|c| c.rows.iter().map(|row| row.to_row()))
        .collect();
    assert_eq!(rows.len() as u64, last.rows_sent);
    assert_eq!(rows.len() as u64, MEMBERS, "every member, once");
    let position = (last.log_position, last.last_entry_seq);
    assert!(chunks
        .iter()
        .all(|c| (c.log_position, c.last_entry_seq) == position));

    server.stop();
    let log = CommandLog::open(&server.data.0.join("log.redb")).expect("the log opens");
    let at_snapshot = balances_from_entries(&log, last.last_entry_seq);
    let snapshot: BTreeMap<u64, (i64, i64)> = rows
        .iter()
        .map(|row| {
            let n = &row.numbers;
            (n.member, (n.points, n.credit_minor))
        })
        .collect();
    assert_eq!(
        snapshot, at_snapshot,
        "each member's row is its entries up to the position"
    );
    // The test means something only if members changed after the position: their rows were
    // captured before the change.
    let now = balances_from_entries(&log, u64::MAX);
    let changed_after = now.iter().filter(|(m, b)| at_snapshot.get(m) != Some(b));
    assert!(
        changed_after.count() > 0,
        "members changed while it streamed"
    );
    let total: i64 = snapshot.values().map(|b| b.0).sum();
    assert_eq!(total, at_snapshot.values().map(|b| b.0).sum::<i64>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_operator_of_the_merchant_gets_a_snapshot() {
    let server = TestServer::start("quic-snapshot-auth", Limits::default());
    let pos = server.client(&terminal("demo", None, "pos-1")).await;
    assert_applied(&pos.send(purchase(1, 1, 0)).await.unwrap());
    let refused = pos
        .snapshot(snapshot_command("demo", false), |_| {
            panic!("no rows for a terminal")
        })
        .await
        .expect("answered");
    assert_rejected(&refused, Reason::Unauthorized);
    let manager = server.client(&admin(Some("demo"), "manager")).await;
    let refused = manager
        .snapshot(snapshot_command("demo", true), |_| {
            panic!("no rows of other merchants")
        })
        .await
        .expect("answered");
    assert_rejected(&refused, Reason::Unauthorized);
    let mut rows = 0;
    let result = manager
        .snapshot(snapshot_command("demo", false), |chunk| {
            rows += chunk.rows.len()
        })
        .await
        .expect("answered");
    assert_applied(&result);
    assert_eq!(rows, 1);
    // Every merchant, for an operator of all: the shop has no members yet.
    let ops = server.client(&admin(None, "ops")).await;
    let mut merchants = Vec::new();
    let result = ops
        .snapshot(snapshot_command("*", true), |chunk| {
            merchants.extend(chunk.rows.iter().map(|r| r.merchant.to_string()))
        })
        .await
        .expect("answered");
    assert_applied(&result);
    assert_eq!(merchants, ["demo"]);
}

/// `tally snapshot --server` with an operator's certificate files, as a user runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_snapshot_streams_a_running_servers_members_into_csv_and_parquet() {
    let server = TestServer::start("quic-snapshot-cli", Limits::default());
    let pos = server.client(&terminal("demo", None, "pos-1")).await;
    let batch: Vec<Command> = (0..50).map(|m| purchase(m, m, m)).collect();
    pos.submit(batch).await.expect("answered");
    let authority = Authority::load(&server.certs).expect("the CA loads");
    let issued = authority.issue_client(&admin(None, "ops")).expect("issued");
    let dir = &server.data.0;
    std::fs::write(dir.join("ops.pem"), issued.cert_pem).unwrap();
    std::fs::write(dir.join("ops.key"), issued.key_pem).unwrap();
    let address = server.running().address.to_string();
    let (dir, ca) = (dir.clone(), server.certs.ca_cert());
    let written = tokio::task::spawn_blocking(move || {
        ["csv", "parquet"].map(|extension| {
            let out = dir.join(format!("live.{extension}"));
            let output = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
                .args(["snapshot", "--server", &address, "--merchant", "demo"])
                .arg("--cert")
                .arg(dir.join("ops.pem"))
                .arg("--ca")
                .arg(&ca)
                .arg("--out")
                .arg(&out)
                .output()
                .expect("tally runs");
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            assert!(output.status.success(), "{stderr}");
            (out, stderr)
        })
    })
    .await
    .unwrap();
    let [(csv, said), (parquet, _)] = written;
    assert!(said.contains("50 members as of log batch"), "{said}");
    let csv = std::fs::read_to_string(csv).unwrap();
    let points: i64 = csv
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(4).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(csv.lines().count(), 51);
    assert!(points > 0);
    let reader = SerializedFileReader::new(std::fs::File::open(parquet).unwrap()).unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 50);
}
