//! `tally ingest` as a user runs it: a real process, a real redb file on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

/// A scratch folder removed when the test ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tally-ingest-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        std::fs::write(dir.join("demo.toml"), DEMO_PROGRAM).expect("program written");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_commands(path: &Path, count: usize) {
    let lines: Vec<String> = Workload::new(WorkloadConfig::demo(300))
        .take(count)
        .map(|c| c.to_json_line())
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("commands written");
}

fn run(args: &[&str]) -> Output {
    Command::new(TALLY)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("tally runs")
}

fn ingest(scratch: &Scratch, input: &Path, balances: &Path) -> Output {
    let data = scratch.path("data");
    let program = scratch.path("demo.toml");
    let args = [
        "ingest",
        "--data",
        path(&data),
        "--program",
        path(&program),
        "--clock",
        "event",
    ];
    let output = run(&[
        &args[..],
        &["--input", path(input), "--balances-out", path(balances)],
    ]
    .concat());
    assert!(
        output.status.success(),
        "ingest failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn path(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn statuses(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let result: serde_json::Value = serde_json::from_str(line).expect("a result is JSON");
            result["status"].as_str().expect("a status").to_string()
        })
        .collect()
}

#[test]
fn a_restart_recovers_and_answers_duplicates_like_a_replay_of_what_was_seen() {
    let scratch = Scratch::new("recover");
    let commands = scratch.path("commands.jsonl");
    write_commands(&commands, 600);
    let first = ingest(&scratch, &commands, &scratch.path("first.csv"));
    let second = ingest(&scratch, &commands, &scratch.path("second.csv"));
    let (first, second) = (statuses(&first), statuses(&second));
    assert_eq!(
        (first.len(), second.len()),
        (600, 600),
        "one result per command"
    );
    for (index, (before, after)) in first.iter().zip(&second).enumerate() {
        // Applied the first time: remembered (quotes aside, which change nothing).
        if before == "applied" {
            assert!(
                after == "duplicate" || after == "applied",
                "command {index}: {before} then {after}"
            );
        }
    }
    assert!(
        second.iter().filter(|s| *s == "duplicate").count() > 500,
        "the second run repeats the first"
    );
    // The same as applying, offline, everything the engine was given in that order.
    let seen = scratch.path("seen.jsonl");
    let text = std::fs::read_to_string(&commands).expect("readable");
    std::fs::write(&seen, text.repeat(2)).expect("written");
    let replayed = scratch.path("replayed.csv");
    let program = scratch.path("demo.toml");
    let output = run(&[
        "replay",
        "--program",
        path(&program),
        "--input",
        path(&seen),
        "--balances-out",
        path(&replayed),
    ]);
    assert!(output.status.success());
    assert_eq!(
        std::fs::read_to_string(scratch.path("second.csv")).unwrap(),
        std::fs::read_to_string(replayed).unwrap()
    );
}

#[test]
fn a_damaged_batch_is_refused_with_its_place() {
    let scratch = Scratch::new("damaged");
    let commands = scratch.path("commands.jsonl");
    write_commands(&commands, 50);
    ingest(&scratch, &commands, &scratch.path("balances.csv"));
    damage_batch(&scratch.path("data").join("log.redb"), 0);
    let data = scratch.path("data");
    let output = run(&[
        "ingest",
        "--data",
        path(&data),
        "--clock",
        "event",
        "--input",
        path(&commands),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a damaged log must not be served");
    assert!(
        stderr.contains("corrupt at batch 0") && stderr.contains("checksum"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing is acknowledged");
}

/// Flips one byte inside a batch's value, through redb: damage that redb's own page
/// checksums cannot see (a bug, or memory going bad before the write), which the batch
/// checksum must catch.
fn damage_batch(log: &Path, batch: u64) {
    use redb::ReadableTable;
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("batches");
    let db = redb::Database::open(log).expect("the log opens");
    let write = db.begin_write().expect("write");
    {
        let mut batches = write.open_table(table).expect("table");
        let mut bytes = batches
            .get(batch)
            .expect("read")
            .expect("batch exists")
            .value()
            .to_vec();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        batches.insert(batch, bytes.as_slice()).expect("written");
    }
    write.commit().expect("committed");
}
