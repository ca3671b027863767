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
    ingest_with(scratch, input, balances, &[])
}

fn ingest_with(scratch: &Scratch, input: &Path, balances: &Path, more: &[&str]) -> Output {
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
        more,
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
    ingest_with(
        &scratch,
        &commands,
        &scratch.path("balances.csv"),
        &["--checkpoint-every", "0"],
    );
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

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_restart_loads_the_checkpoint_and_replays_only_the_log_after_it() {
    let scratch = Scratch::new("checkpointed");
    let commands = scratch.path("commands.jsonl");
    write_commands(&commands, 600);
    let more = ["--checkpoint-every", "100"];
    let first = ingest_with(&scratch, &commands, &scratch.path("first.csv"), &more);
    assert!(
        stderr_of(&first).contains("recovered 0 commands"),
        "{}",
        stderr_of(&first)
    );
    let second = ingest_with(&scratch, &commands, &scratch.path("second.csv"), &more);
    let stderr = stderr_of(&second);
    // The first run ended with a checkpoint: nothing is left to replay.
    assert!(
        stderr.contains("recovered checkpoint of batch") && stderr.contains("then 0 commands"),
        "{stderr}"
    );
    let first_digest = stderr_of(&first).lines().last().unwrap().to_string();
    assert!(
        stderr.contains(first_digest.trim_start_matches("state ")),
        "the state loaded is the state the first run ended with: {stderr}"
    );
    // Compaction removed the batches the checkpoints hold.
    let log = redb::Database::open(scratch.path("data").join("log.redb")).expect("log opens");
    let read = log.begin_read().expect("read");
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("batches");
    use redb::ReadableTableMetadata;
    let batches = read.open_table(table).expect("table").len().expect("len");
    assert!(batches <= 2, "{batches} batches left after compaction");
    // Every command remembered by the first run is a duplicate after the restart.
    let remembered = |output: &Output| -> Vec<bool> {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let result: serde_json::Value = serde_json::from_str(line).expect("JSON");
                result["status"] == "applied" && result["command"] != "quote"
            })
            .collect()
    };
    let duplicates: Vec<bool> = statuses(&second).iter().map(|s| s == "duplicate").collect();
    assert_eq!(duplicates, remembered(&first));
}

#[test]
fn a_damaged_checkpoint_is_refused_with_its_place() {
    let scratch = Scratch::new("bad-checkpoint");
    let commands = scratch.path("commands.jsonl");
    write_commands(&commands, 50);
    ingest(&scratch, &commands, &scratch.path("balances.csv"));
    let file = scratch.path("data").join("checkpoint");
    let mut bytes = std::fs::read(&file).expect("a checkpoint was written");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&file, bytes).expect("damaged");
    let data = scratch.path("data");
    let output = run(&["ingest", "--data", path(&data), "--input", path(&commands)]);
    let stderr = stderr_of(&output);
    assert!(
        !output.status.success(),
        "a damaged checkpoint must not be served"
    );
    assert!(
        stderr.contains("checkpoint") && stderr.contains("corrupt at byte"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing is acknowledged");
}

#[test]
fn a_log_behind_its_checkpoint_is_refused() {
    let scratch = Scratch::new("lost-log");
    let commands = scratch.path("commands.jsonl");
    write_commands(&commands, 50);
    ingest(&scratch, &commands, &scratch.path("balances.csv"));
    std::fs::remove_file(scratch.path("data").join("log.redb")).expect("log removed");
    let data = scratch.path("data");
    let output = run(&["ingest", "--data", path(&data), "--input", path(&commands)]);
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("the log ends before"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing is acknowledged");
}

/// The busiest member's card (the workload's members are drawn Zipf-distributed by rank).
fn busiest_card() -> String {
    format!("C{:010}", tally_engine::workload::card_of_rank(1, 300))
}

/// Pages of the busiest member's statement, `per_page` entries each.
fn statement_lines(per_page: u32, pages: u32) -> String {
    let card = busiest_card();
    (0..pages)
        .map(|page| {
            format!(
                r#"{{"merchant":"demo","admin":"ops","txn":"statement-{page}","at":"2026-01-05T12:00:00Z","statement":{{"member":{{"card":"{card}"}},"page":{page},"per_page":{per_page}}}}}"#
            ) + "\n"
        })
        .collect()
}

fn statement_pages(output: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON"))
        .filter(|result| result["command"] == "statement")
        .collect()
}

#[test]
fn a_statement_pages_through_a_members_entries_newest_first_and_survives_a_restart() {
    let scratch = Scratch::new("statement");
    let commands = scratch.path("commands.jsonl");
    write_commands(&commands, 600);
    let with_queries = scratch.path("with-queries.jsonl");
    let text = std::fs::read_to_string(&commands).unwrap() + &statement_lines(50, 20);
    std::fs::write(&with_queries, text).unwrap();
    let first = ingest(&scratch, &with_queries, &scratch.path("first.csv"));
    let pages = statement_pages(&first);
    assert_eq!(pages.len(), 20);
    let mut seqs = Vec::new();
    let (mut points, mut credit) = (0i64, rust_decimal::Decimal::ZERO);
    for page in &pages {
        assert_eq!(page["status"], "applied", "{page}");
        let statement = &page["statement"];
        for entry in statement["entries"].as_array().unwrap() {
            seqs.push(entry["seq"].as_u64().unwrap());
            let amount: rust_decimal::Decimal = entry["amount"].as_str().unwrap().parse().unwrap();
            match entry["wallet"].as_str().unwrap() {
                "points" => points += i64::try_from(amount.mantissa()).unwrap(),
                _ => credit += amount,
            }
            assert!(entry["command"].as_str().unwrap().contains('/'), "{entry}");
        }
    }
    let total = pages[0]["statement"]["total_entries"].as_u64().unwrap();
    assert!(total > 50 * 3, "several pages: {total} entries");
    assert!(total < 50 * 20, "the last pages are empty: {total} entries");
    assert_eq!(seqs.len() as u64, total, "the pages hold every entry once");
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");
    // Balances are the sum of entries.
    let balances = std::fs::read_to_string(scratch.path("first.csv")).unwrap();
    let card = format!("card:{}", busiest_card());
    let member = balances
        .lines()
        .find(|line| line.contains(&card))
        .expect("the busiest member");
    let columns: Vec<&str> = member.split(',').collect();
    assert_eq!(columns[3], points.to_string(), "{member}");
    assert_eq!(columns[7].parse::<rust_decimal::Decimal>().unwrap(), credit);

    // After a restart (from the checkpoint) the statement reads the same.
    let queries = scratch.path("queries.jsonl");
    std::fs::write(&queries, statement_lines(50, 20)).unwrap();
    let second = ingest(&scratch, &queries, &scratch.path("second.csv"));
    assert_eq!(statement_pages(&second), pages);
}

#[test]
fn a_statement_is_for_operators_and_names_a_known_member() {
    let scratch = Scratch::new("statement-refused");
    let commands = scratch.path("commands.jsonl");
    write_commands(&commands, 20);
    let queries = [
        r#"{"merchant":"demo","terminal":"pos-1","txn":"q1","at":"2026-01-05T12:00:00Z","statement":{"member":{"id":1}}}"#,
        r#"{"merchant":"demo","admin":"ops","txn":"q2","at":"2026-01-05T12:00:00Z","statement":{"member":{"id":999999}}}"#,
        r#"{"merchant":"demo","admin":"ops","txn":"q3","at":"2026-01-05T12:00:00Z","statement":{"member":{"id":1},"per_page":0}}"#,
    ];
    let text = std::fs::read_to_string(&commands).unwrap() + &queries.join("\n") + "\n";
    std::fs::write(&commands, text).unwrap();
    let output = ingest(&scratch, &commands, &scratch.path("balances.csv"));
    let reasons: Vec<String> = statement_pages(&output)
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or("none").to_string())
        .collect();
    assert_eq!(reasons, ["unauthorized", "unknown_member", "invalid"]);
}

/// A line without an end in sight (a stream of garbage, a file cut and glued wrong) is
/// skipped to its end and answered `invalid`, without being held in memory, and so is a line
/// that is not text; the commands around them apply. `tally replay` reads its input the same
/// way.
#[test]
fn lines_too_long_or_not_text_are_rejected_and_the_others_apply() {
    let scratch = Scratch::new("long-line");
    let input = scratch.path("orders.jsonl");
    write_commands(&input, 40);
    let mut text = std::fs::read_to_string(&input).expect("commands read");
    let garbage = "x".repeat(tally_engine::lines::MAX_LINE_BYTES + 1);
    let at = text.match_indices('\n').nth(19).expect("40 lines").0 + 1;
    text.insert_str(at, &format!("{garbage}\n"));
    // And a line that is not text, ten lines on.
    let mut bytes = text.into_bytes();
    let at = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(30)
        .expect("41 lines")
        .0
        + 1;
    bytes.splice(at..at, b"\xff\xfe\n".iter().copied());
    std::fs::write(&input, bytes).expect("commands written");

    let output = ingest(&scratch, &input, &scratch.path("balances.csv"));
    let results: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a result is JSON"))
        .collect();
    assert_eq!(results.len(), 42);
    let not_text = &results[31];
    assert_eq!(not_text["key"], "line:32", "{not_text}");
    assert!(
        not_text["message"].as_str().unwrap().contains("not UTF-8"),
        "{not_text}"
    );
    let long = &results[20];
    assert_eq!(long["reason"], "invalid", "{long}");
    assert_eq!(long["key"], "line:21", "{long}");
    assert!(
        long["message"]
            .as_str()
            .unwrap()
            .contains("longer than 16 MiB"),
        "{long}"
    );
    let others = results
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 20 && *i != 31);
    assert!(
        others.clone().all(|(_, r)| r["status"] == "applied"),
        "{results:?}"
    );

    let replayed = run(&[
        "replay",
        "--program",
        path(&scratch.path("demo.toml")),
        "--input",
        path(&input),
        "--results-out",
        path(&scratch.path("replayed.jsonl")),
    ]);
    assert!(replayed.status.success(), "{replayed:?}");
    let replayed = std::fs::read_to_string(scratch.path("replayed.jsonl")).expect("results");
    assert!(
        replayed.contains("line 21: longer than 16 MiB"),
        "{replayed}"
    );
    assert!(replayed.contains("line 32: not UTF-8"), "{replayed}");
}

/// The same program given twice installs once, and the data directory recovers after it;
/// two different programs under one merchant and version are refused with a sentence.
#[test]
fn a_program_given_twice_installs_once_and_recovers() {
    let scratch = Scratch::new("program-twice");
    let input = scratch.path("orders.jsonl");
    write_commands(&input, 20);
    let program = scratch.path("demo.toml");
    let twice = ["--program", path(&program)];
    ingest_with(&scratch, &input, &scratch.path("first.csv"), &twice);
    // Recovery replays the log: a logged install that did not apply again would stop it.
    let again = ingest_with(&scratch, &input, &scratch.path("second.csv"), &twice);
    assert!(statuses(&again).iter().all(|s| s == "duplicate"));

    let other = scratch.path("other.toml");
    std::fs::write(
        &other,
        DEMO_PROGRAM.replacen("min_redeem_points = 100", "min_redeem_points = 200", 1),
    )
    .expect("program written");
    let fresh = scratch.path("fresh");
    let refused = run(&[
        "ingest",
        "--data",
        path(&fresh),
        "--program",
        path(&program),
        "--program",
        path(&other),
        "--input",
        path(&input),
    ]);
    assert!(!refused.status.success());
    let said = stderr_of(&refused);
    assert!(
        said.contains("two different programs for merchant demo are both version 1"),
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
}

/// With `--results rejected` an import writes only the results of what did not go in and
/// the answers to its queries, in input order, and leaves the state that writing every
/// result leaves. Run again, the commands already applied answer `duplicate` and are not
/// written either.
#[test]
fn an_import_can_write_only_what_was_rejected() {
    let input_of = |scratch: &Scratch| {
        let input = scratch.path("orders.jsonl");
        write_commands(&input, 60);
        let mut text = std::fs::read_to_string(&input).expect("commands read");
        text.insert_str(0, "not json\n");
        text.push_str(
            r#"{"merchant":"nobody","terminal":"t","txn":"1","at":"2026-01-05T12:00:00Z","event":{"member":{"id":1},"name":"review"}}"#,
        );
        text.push('\n');
        text.push_str(&statement_lines(5, 1));
        std::fs::write(&input, text).expect("commands written");
        input
    };
    let every = Scratch::new("results-all");
    let all = ingest(&every, &input_of(&every), &every.path("balances.csv"));
    let asked_for = |line: &&str| {
        line.contains(r#""status":"rejected""#) || line.contains(r#""command":"statement""#)
    };
    let rejected_of_all: Vec<String> = String::from_utf8_lossy(&all.stdout)
        .lines()
        .filter(asked_for)
        .map(str::to_string)
        .collect();
    assert_eq!(statuses(&all).len(), 63);
    assert!(rejected_of_all.len() >= 3, "{rejected_of_all:?}");

    let only = Scratch::new("results-rejected");
    let input = input_of(&only);
    let balances = only.path("balances.csv");
    let rejected = ["--results", "rejected"];
    let written = ingest_with(&only, &input, &balances, &rejected);
    let lines: Vec<String> = String::from_utf8_lossy(&written.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines, rejected_of_all);
    assert!(lines[0].contains(r#""key":"line:1""#), "{}", lines[0]);
    assert!(
        lines[lines.len() - 2].contains("unknown_merchant"),
        "{lines:?}"
    );
    let statement = lines.last().unwrap();
    assert!(statement.contains(r#""status":"applied""#), "{statement}");
    assert!(statement.contains(r#""entries":"#), "{statement}");
    let read = |path: &Path| std::fs::read_to_string(path).expect("balances written");
    assert_eq!(read(&balances), read(&every.path("balances.csv")));

    let again = ingest_with(&only, &input, &only.path("again.csv"), &rejected);
    let statuses = statuses(&again);
    let (answer, refused) = statuses.split_last().expect("the statement's answer");
    assert_eq!(
        answer, "applied",
        "a statement is answered again: {statuses:?}"
    );
    assert!(refused.len() >= 2, "the two bad lines again: {statuses:?}");
    assert!(refused.iter().all(|status| status == "rejected"));
}
