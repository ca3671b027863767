//! `tally snapshot` as a user runs it: after `tally ingest`, from the data directory, as CSV
//! and as Parquet.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use tally_engine::log::CommandLog;
use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `tally` with these arguments; it must succeed. Returns what it printed.
fn run(args: &[&str]) -> String {
    let output = Command::new(TALLY)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("tally runs");
    assert!(
        output.status.success(),
        "tally {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// (member, points, credit, tier, log position) per CSV row.
type Row = (i64, i64, String, String, String);

fn csv_rows(path: &Path) -> Vec<Row> {
    let text = std::fs::read_to_string(path).expect("snapshot written");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(tally_engine::snapshot::CSV_HEADER),
        "the header"
    );
    lines
        .map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            (
                c[2].parse().unwrap(),
                c[4].parse().unwrap(),
                c[8].parse::<rust_decimal::Decimal>()
                    .unwrap()
                    .normalize()
                    .to_string(),
                c[10].to_string(),
                c[0].to_string(),
            )
        })
        .collect()
}

fn parquet_rows(path: &Path) -> Vec<Row> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
            let long = |i: usize| match fields[i] {
                Field::Long(v) => *v,
                other => panic!("column {i}: {other:?}"),
            };
            let credit = match fields[8] {
                Field::Decimal(d) => {
                    let bytes: [u8; 8] = d.data().try_into().unwrap();
                    rust_decimal::Decimal::new(i64::from_be_bytes(bytes), 4)
                }
                Field::Long(v) => rust_decimal::Decimal::new(*v, 4),
                other => panic!("credit: {other:?}"),
            };
            let tier = match fields[10] {
                Field::Str(s) => s.clone(),
                Field::Null => String::new(),
                other => panic!("tier: {other:?}"),
            };
            (
                long(2),
                long(4),
                credit.normalize().to_string(),
                tier,
                long(0).to_string(),
            )
        })
        .collect()
}

/// The Parquet file as pyarrow reads it, in the same shape as `parquet_rows`; `None` (with a
/// note) where pyarrow is not installed. `.ci/run` installs it and names its Python in
/// `TALLY_PYTHON`.
fn python_rows(path: &Path) -> Option<Vec<Row>> {
    const READ_BACK: &str = r#"
import sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1]).to_pylist()
for row in table:
    credit = row["credit"].normalize()
    print(row["member"], row["points"], "{:f}".format(credit), row["tier"] or "", row["log_position"], sep="|")
"#;
    let python = std::env::var("TALLY_PYTHON").unwrap_or_else(|_| "python3".into());
    let available = Command::new(&python)
        .args(["-c", "import pyarrow"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !available {
        println!("note: pyarrow is not installed for {python}; the Python read-back is skipped");
        return None;
    }
    let output = Command::new(&python)
        .args(["-c", READ_BACK, text(path)])
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows = String::from_utf8(output.stdout).expect("UTF-8");
    Some(
        rows.lines()
            .map(|line| {
                let c: Vec<&str> = line.split('|').collect();
                let credit: rust_decimal::Decimal = c[2].parse().unwrap();
                (
                    c[0].parse().unwrap(),
                    c[1].parse().unwrap(),
                    credit.normalize().to_string(),
                    c[3].to_string(),
                    c[4].to_string(),
                )
            })
            .collect(),
    )
}

/// A data directory after `tally ingest` of 800 demo commands, with the final balances.
fn ingested(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir);
    let path = |name: &str| scratch.0.join(name);
    std::fs::write(path("demo.toml"), DEMO_PROGRAM).unwrap();
    let lines: Vec<String> = Workload::new(WorkloadConfig::demo(300))
        .take(800)
        .map(|c| c.to_json_line())
        .collect();
    std::fs::write(path("commands.jsonl"), lines.join("\n") + "\n").unwrap();
    run(&[
        "ingest",
        "--data",
        text(&path("data")),
        "--program",
        text(&path("demo.toml")),
        "--clock",
        "event",
        "--input",
        text(&path("commands.jsonl")),
        "--balances-out",
        text(&path("balances.csv")),
    ]);
    scratch
}

#[test]
fn a_snapshot_as_csv_and_parquet_agrees_with_the_entries_up_to_its_position() {
    let scratch = ingested("snapshot");
    let path = |name: &str| scratch.0.join(name);
    let data = path("data");
    run(&[
        "snapshot",
        "--data",
        text(&data),
        "--out",
        text(&path("s.csv")),
    ]);
    run(&[
        "snapshot",
        "--data",
        text(&data),
        "--out",
        text(&path("s.parquet")),
    ]);

    let csv = csv_rows(&path("s.csv"));
    let parquet = parquet_rows(&path("s.parquet"));
    assert!(csv.len() > 100, "{} members", csv.len());
    assert_eq!(csv, parquet, "CSV and Parquet hold the same snapshot");
    if let Some(python) = python_rows(&path("s.parquet")) {
        assert_eq!(csv, python, "pyarrow reads the same snapshot");
    }
    let position = &csv[0].4;
    assert!(
        csv.iter().all(|row| &row.4 == position),
        "one position for all"
    );

    // Every member's points are the ingest's final balances...
    let balances = std::fs::read_to_string(path("balances.csv")).unwrap();
    let ingested: Vec<(i64, i64)> = balances
        .lines()
        .skip(1)
        .map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            (c[1].parse().unwrap(), c[3].parse().unwrap())
        })
        .collect();
    let snapshot: Vec<(i64, i64)> = csv.iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(snapshot, ingested);
    // ... and their total is exactly the sum of the logged points entries.
    let log = CommandLog::open(&data.join("log.redb")).unwrap();
    assert_eq!(log.batches().checked_sub(1).unwrap().to_string(), *position);
    let mut entries_total = 0i64;
    log.scan_entries(|entry| {
        if entry.wallet == tally_protocol::Wallet::Points {
            entries_total += entry.amount;
        }
    })
    .unwrap();
    assert_eq!(snapshot.iter().map(|r| r.1).sum::<i64>(), entries_total);
}

fn report(data: &Path, extra: &[&str]) -> String {
    run(&[&["report", "--data", text(data)][..], extra].concat())
}

#[test]
fn a_report_values_the_liability_and_its_activity_sums_to_the_balances() {
    let scratch = ingested("report");
    let data = scratch.0.join("data");
    let json: serde_json::Value = serde_json::from_str(&report(&data, &[])).expect("JSON");
    let demo = &json["merchants"][0];
    let balances = std::fs::read_to_string(scratch.0.join("balances.csv")).unwrap();
    let points: i64 = balances
        .lines()
        .skip(1)
        .map(|line| line.split(',').nth(3).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(demo["points_outstanding"], points);
    let sum = |lines: &serde_json::Value, field: &str| -> i64 {
        lines
            .as_array()
            .unwrap()
            .iter()
            .map(|line| line[field].as_i64().unwrap())
            .sum()
    };
    assert_eq!(sum(&demo["by_tier"], "points"), points);
    assert_eq!(
        sum(&demo["by_tier"], "members"),
        demo["members"].as_i64().unwrap()
    );
    // Over all time, the points entries add up to the balances; expiry is the breakage.
    let activity = demo["activity"].as_array().unwrap();
    let amount =
        |line: &serde_json::Value| line["amount"].as_str().unwrap().parse::<i64>().unwrap();
    let points_lines = activity.iter().filter(|line| line["wallet"] == "points");
    assert_eq!(points_lines.clone().map(amount).sum::<i64>(), points);
    let expired: i64 = points_lines
        .filter(|l| l["kind"] == "expiry")
        .map(amount)
        .sum();
    assert_eq!(demo["breakage_points"].as_i64().unwrap(), -expired);
    assert!(activity
        .iter()
        .any(|l| l["rule"].as_str().unwrap().starts_with("promotion:")));

    // A period before the first command has no activity; the balances do not change.
    let before: serde_json::Value =
        serde_json::from_str(&report(&data, &["--to", "2026-01-01"])).unwrap();
    assert_eq!(before["merchants"][0]["activity"], serde_json::json!([]));
    assert_eq!(before["merchants"][0]["points_outstanding"], points);

    let csv = report(&data, &["--format", "csv"]);
    assert!(csv.starts_with("section,merchant,key,kind,count,points,amount\n"));
    let total = format!("total,demo,points,,{},{points},", demo["members"]);
    assert!(csv.lines().any(|l| l.starts_with(&total)), "{csv}");
    let html = report(&data, &["--format", "html"]);
    assert!(html.contains("<svg") && html.contains("Liability by month of expiry"));
}

/// `tally ingest` of `commands` in runs of `per_run` (each run ends with a checkpoint),
/// keeping `keep` older checkpoints.
fn ingest_in_runs(dir: &Path, commands: &[String], per_run: usize, keep: usize) {
    std::fs::write(dir.join("demo.toml"), DEMO_PROGRAM).unwrap();
    for (run_index, part) in commands.chunks(per_run).enumerate() {
        let input = dir.join(format!("run-{run_index}.jsonl"));
        std::fs::write(&input, part.join("\n") + "\n").unwrap();
        run(&[
            "ingest",
            "--data",
            text(&dir.join("data")),
            "--program",
            text(&dir.join("demo.toml")),
            "--clock",
            "event",
            "--keep-checkpoints",
            &keep.to_string(),
            "--input",
            text(&input),
        ]);
    }
}

/// (member, points, credit) from a balances CSV (`tally replay`) or a snapshot CSV.
fn points_and_credit(
    csv: &str,
    member: usize,
    points: usize,
    credit: usize,
) -> Vec<(i64, i64, String)> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            let money: rust_decimal::Decimal = c[credit].parse().unwrap();
            (
                c[member].parse().unwrap(),
                c[points].parse().unwrap(),
                money.normalize().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_as_of_snapshot_equals_a_replay_of_the_commands_up_to_that_time() {
    let dir = std::env::temp_dir().join(format!("tally-as-of-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let scratch = Scratch(dir);
    let path = |name: &str| scratch.0.join(name);
    let commands: Vec<tally_protocol::Command> =
        Workload::new(WorkloadConfig::demo(300)).take(800).collect();
    let lines: Vec<String> = commands.iter().map(|c| c.to_json_line()).collect();
    // Four runs, four checkpoints; two older ones kept, so the first run's times are gone.
    ingest_in_runs(&scratch.0, &lines, 200, 2);
    let data = path("data");

    // A time in the third run: the second run's checkpoint and the log after it.
    let as_of = commands[530].at;
    assert!(commands[531].at > as_of, "the workload's times increase");
    let upto: Vec<String> = commands
        .iter()
        .filter(|c| c.at <= as_of)
        .map(|c| c.to_json_line())
        .collect();
    std::fs::write(path("upto.jsonl"), upto.join("\n") + "\n").unwrap();
    let replayed = run(&[
        "replay",
        "--program",
        text(&path("demo.toml")),
        "--input",
        text(&path("upto.jsonl")),
    ]);
    let as_of_text = as_of.to_rfc3339();
    run(&[
        "snapshot",
        "--data",
        text(&data),
        "--as-of",
        &as_of_text,
        "--out",
        text(&path("as-of.csv")),
    ]);
    let snapshot = std::fs::read_to_string(path("as-of.csv")).unwrap();
    let expected = points_and_credit(&replayed, 1, 3, 7);
    assert!(expected.len() > 100, "{} members", expected.len());
    assert_eq!(points_and_credit(&snapshot, 2, 4, 8), expected);
    // Not the balances now: later commands changed them.
    run(&[
        "snapshot",
        "--data",
        text(&data),
        "--out",
        text(&path("now.csv")),
    ]);
    let now = std::fs::read_to_string(path("now.csv")).unwrap();
    assert_ne!(points_and_credit(&now, 2, 4, 8), expected);

    tier_movements_are_the_changes_between_two_as_of_snapshots(
        &data,
        &commands[450].at.to_rfc3339(),
        &commands[790].at.to_rfc3339(),
        &scratch.0,
    );

    // The first run's times are no longer kept: refused, naming the oldest time there is.
    let early = commands[100].at.to_rfc3339();
    let refused = Command::new(TALLY)
        .args(["snapshot", "--data", text(&data), "--as-of", &early])
        .args(["--out", text(&path("early.csv"))])
        .output()
        .expect("tally runs");
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    let oldest = commands[399].at.to_string();
    assert!(
        message.contains("the oldest time available is") && message.contains(&oldest),
        "{message}"
    );
}

/// (member, tier) per row of a snapshot CSV.
fn tiers_of(csv: &str) -> BTreeMap<i64, String> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let c: Vec<&str> = line.split(',').collect();
            (c[2].parse().unwrap(), c[10].to_string())
        })
        .collect()
}

fn tier_movements_are_the_changes_between_two_as_of_snapshots(
    data: &Path,
    from: &str,
    to: &str,
    scratch: &Path,
) {
    let at = |time: &str, name: &str| {
        let out = scratch.join(name);
        run(&[
            "snapshot",
            "--data",
            text(data),
            "--as-of",
            time,
            "--out",
            text(&out),
        ]);
        tiers_of(&std::fs::read_to_string(out).unwrap())
    };
    let (start, end) = (at(from, "from.csv"), at(to, "to.csv"));
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (member, tier) in &end {
        let before = start.get(member).cloned().unwrap_or("new".into());
        if before != *tier {
            *expected.entry((before, tier.clone())).or_default() += 1;
        }
    }
    assert!(!expected.is_empty(), "members moved in the period");
    let json: serde_json::Value =
        serde_json::from_str(&report(data, &["--from", from, "--to", to])).unwrap();
    let movements = json["merchants"][0]["tier_movements"]
        .as_array()
        .expect("movements");
    let reported: BTreeMap<(String, String), u64> = movements
        .iter()
        .map(|m| {
            let name = |field: &str| m[field].as_str().unwrap().to_string();
            ((name("from"), name("to")), m["members"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(reported, expected);
}
