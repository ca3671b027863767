//! IO faults during commit: a failed fsync and a full disk. The engine must acknowledge
//! nothing that is not durable, stop, and recover to the last durable state on a good disk.

use std::path::PathBuf;
use std::time::Instant;

use tally_engine::ingest::{Clock, Engine};
use tally_engine::log::{CommandLog, Faults};
use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tally-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn command_lines(count: usize) -> Vec<String> {
    Workload::new(WorkloadConfig::demo(200))
        .take(count)
        .map(|command| command.to_json_line())
        .collect()
}

/// Runs lines through the engine; returns the result lines written and whether it failed.
fn feed(engine: &mut Engine, lines: &[String]) -> (Vec<serde_json::Value>, bool) {
    let input = lines.join("\n") + "\n";
    let mut output = Vec::new();
    let failed = engine
        .run(std::io::Cursor::new(input), &mut output)
        .is_err();
    let results = String::from_utf8(output)
        .expect("UTF-8 results")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a result is JSON"))
        .collect();
    (results, failed)
}

fn status(result: &serde_json::Value) -> &str {
    result["status"].as_str().expect("a status")
}

/// Whether the commands of a failed commit can be in the log after a restart.
#[derive(PartialEq)]
enum Kept {
    /// The write itself failed: nothing reached the file.
    Never,
    /// The fsync failed after the write: the pages may have reached the disk anyway. Then the
    /// commands are there once, unacknowledged, and a resend answers `duplicate`.
    Maybe,
}

/// A fault during the commit of the second half: nothing of it is acknowledged, the engine
/// stops, and on a good disk everything acknowledged is there exactly once.
fn fault_during_commit(name: &str, kept: Kept, arm: impl Fn(&Faults)) {
    let scratch = Scratch::new(name);
    let log_path = scratch.0.join("log.redb");
    let lines = command_lines(400);
    let (first, second) = lines.split_at(200);
    let faults = Faults::default();
    let log = CommandLog::open_faulty(&log_path, faults.clone()).expect("log opens");
    let (mut engine, _) =
        Engine::open_log(&scratch.0, log, Clock::Event, Instant::now()).expect("engine opens");
    engine
        .install_programs(&[DEMO_PROGRAM.to_string()])
        .expect("program installed");
    let (acknowledged, failed) = feed(&mut engine, first);
    assert!(
        !failed && acknowledged.len() == 200,
        "the first half is acknowledged"
    );
    arm(&faults);
    let (after_fault, failed) = feed(&mut engine, second);
    assert!(failed, "a failed commit stops the engine");
    assert!(
        after_fault.is_empty(),
        "nothing of a failed commit is acknowledged: {after_fault:?}"
    );
    drop(engine); // the process would exit here

    faults.fail_syncs(false);
    faults.fill_disk(false);
    let (mut engine, recovery) =
        Engine::open(&scratch.0, Clock::Event).expect("recovers on a good disk");
    // The first half ended with a checkpoint (the end of an input takes one).
    assert!(recovery.checkpoint.is_some());
    // Everything acknowledged is there exactly once; nothing of the failed group is.
    let (again, failed) = feed(&mut engine, first);
    assert!(!failed);
    for (before, after) in acknowledged.iter().zip(&again) {
        if status(before) == "applied" && before["command"] != "quote" {
            assert_eq!(status(after), "duplicate", "{after}");
        }
    }
    let (retried, failed) = feed(&mut engine, second);
    assert!(!failed);
    if kept == Kept::Never {
        assert!(
            retried.iter().all(|result| status(result) != "duplicate"),
            "the failed group was not kept"
        );
    }
    // Kept or not, a resend never applies anything twice: resending once more is all duplicates
    // (quotes and rejections aside, which are never remembered).
    let (third, failed) = feed(&mut engine, second);
    assert!(!failed);
    for (first_answer, second_answer) in retried.iter().zip(&third) {
        if status(first_answer) == "applied" && first_answer["command"] != "quote" {
            assert_eq!(status(second_answer), "duplicate", "{second_answer}");
        }
    }
}

#[test]
fn a_failed_fsync_acknowledges_nothing_and_recovery_keeps_what_was_durable() {
    fault_during_commit("fsync", Kept::Maybe, |faults| faults.fail_syncs(true));
}

#[test]
fn a_full_disk_acknowledges_nothing_and_recovery_keeps_what_was_durable() {
    fault_during_commit("full", Kept::Never, |faults| faults.fill_disk(true));
}
