//! `Engine::serve`, the entry the network front door uses: many submitters at once, group
//! commit across their submissions, answers only after the group is durable.

use std::path::PathBuf;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Arc;

use tally_engine::ingest::{Clock, Engine, Submission};
use tally_engine::workload::{
    demo_program_of, interleaved, Workload, WorkloadConfig, DEMO_PROGRAM,
};
use tally_protocol::{Command, CommandResult};

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SUBMITTERS: usize = 4;
const PER_SUBMISSION: usize = 10;

/// Serves `commands` from `SUBMITTERS` threads at once, each waiting for its answer before it
/// submits again (as a client would); returns each command's result, in `commands` order.
fn serve_concurrently(engine: &mut Engine, commands: &[Command]) -> Vec<Arc<CommandResult>> {
    let (submit, submissions) = sync_channel::<Submission>(8);
    let chunks: Vec<Vec<(usize, Command)>> = (0..SUBMITTERS)
        .map(|s| {
            commands
                .iter()
                .cloned()
                .enumerate()
                .filter(|(i, _)| (i / PER_SUBMISSION) % SUBMITTERS == s)
                .collect()
        })
        .collect();
    let (results_out, results_in) = channel();
    std::thread::scope(|scope| {
        for chunk in chunks {
            let submit = submit.clone();
            let results_out = results_out.clone();
            scope.spawn(move || {
                for batch in chunk.chunks(PER_SUBMISSION) {
                    let (answer, answered) = channel();
                    let submission = Submission::new(
                        batch.iter().map(|(_, c)| c.clone()).collect(),
                        Box::new(move |results| answer.send(results).unwrap()),
                    );
                    submit.send(submission).expect("the engine serves");
                    let results = answered.recv().expect("every submission is answered");
                    assert_eq!(results.len(), batch.len());
                    for ((index, _), result) in batch.iter().zip(results) {
                        results_out.send((*index, result)).unwrap();
                    }
                }
            });
        }
        drop(submit);
        engine
            .serve(&submissions)
            .expect("serves until the submitters are done");
    });
    drop(results_out);
    let mut results: Vec<(usize, Arc<CommandResult>)> = results_in.iter().collect();
    results.sort_by_key(|(index, _)| *index);
    assert_eq!(results.len(), commands.len(), "one result per command");
    results.into_iter().map(|(_, result)| result).collect()
}

/// An engine on `dir` with the demo program that takes no checkpoint, so the whole log stays
/// to be replayed.
fn engine_keeping_the_whole_log(dir: &std::path::Path) -> Engine {
    let (mut engine, _) = Engine::open(dir, Clock::Event).expect("opens");
    engine.set_checkpoint_every(0);
    engine
        .install_programs(&[DEMO_PROGRAM.to_string()])
        .expect("program");
    engine
}

fn status(result: &CommandResult) -> &'static str {
    match result.status {
        tally_protocol::Status::Applied(_) => "applied",
        tally_protocol::Status::Duplicate { .. } => "duplicate",
        tally_protocol::Status::Rejected { .. } => "rejected",
    }
}

#[test]
fn concurrent_submitters_are_answered_once_durable_and_exactly_once_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("tally-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _scratch = Scratch(dir.clone());
    let commands: Vec<Command> = Workload::new(WorkloadConfig::demo(200)).take(800).collect();

    let (mut engine, _) = Engine::open(&dir, Clock::Event).expect("opens");
    engine
        .install_programs(&[DEMO_PROGRAM.to_string()])
        .expect("program");
    let first = serve_concurrently(&mut engine, &commands);
    let applied = first.iter().filter(|r| status(r) == "applied").count();
    assert!(applied > 700, "most commands apply: {applied}");
    drop(engine.close().expect("closes"));

    // Everything answered was durable: after a restart every remembered command is a
    // duplicate, whichever submitter sends it.
    let (mut engine, recovery) = Engine::open(&dir, Clock::Event).expect("recovers");
    assert!(
        recovery.checkpoint.is_some(),
        "serving ends with a checkpoint"
    );
    let second = serve_concurrently(&mut engine, &commands);
    for (index, (before, after)) in first.iter().zip(&second).enumerate() {
        let remembered = status(before) == "applied" && before.command.name() != "quote";
        if remembered {
            assert_eq!(status(after), "duplicate", "command {index}: {after:?}");
        }
    }
}

/// Many submitters on a few hot members, with the commit pipeline between them and the disk:
/// every answer is exactly what a sequential replay of the log gives for that command, so no
/// answer ran ahead of, or apart from, the order the log holds.
#[test]
fn answers_under_many_submitters_equal_a_sequential_replay_of_the_log() {
    let sharded = answers_equal_a_sequential_replay("stress", &["demo"], 1);
    assert_eq!(sharded, 0, "one shard: every group on the engine's thread");
}

/// The same with three merchants on three shards: groups applied on their merchants' shards
/// answer as the log replayed on one thread does.
#[test]
fn sharded_answers_under_many_submitters_equal_a_sequential_replay_of_the_log() {
    let sharded = answers_equal_a_sequential_replay("shards", &["demo", "north", "south"], 3);
    assert!(sharded > 0, "some groups were applied on their shards");
}

/// Serves the merchants' demo traffic from many submitters with `shards` shards, checks every
/// answer against a sequential replay of the log, and says how many groups were sharded.
fn answers_equal_a_sequential_replay(name: &str, merchants: &[&str], shards: usize) -> u64 {
    const STRESS_SUBMITTERS: usize = 16;
    let dir = std::env::temp_dir().join(format!("tally-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _scratch = Scratch(dir.clone());
    // Few members, so most groups hold several commands of the same member.
    let commands: Vec<Command> = interleaved(merchants, &WorkloadConfig::demo(40))
        .take(3_000)
        .collect();

    let (mut engine, _) = Engine::open(&dir, Clock::Event).expect("opens");
    engine.set_checkpoint_every(0);
    engine.set_shards(shards);
    let programs: Vec<String> = merchants.iter().map(|m| demo_program_of(m)).collect();
    engine.install_programs(&programs).expect("programs");
    let (submit, submissions) = sync_channel::<Submission>(4);
    let (results_out, results_in) = channel();
    std::thread::scope(|scope| {
        for submitter in 0..STRESS_SUBMITTERS {
            let submit = submit.clone();
            let results_out = results_out.clone();
            let mine: Vec<Command> = commands
                .iter()
                .skip(submitter)
                .step_by(STRESS_SUBMITTERS)
                .cloned()
                .collect();
            scope.spawn(move || {
                // Submissions of 1 to 7 commands, one outstanding at a time, as a terminal.
                let mut rest = mine.as_slice();
                while !rest.is_empty() {
                    let take = (rest.len() % 7 + 1).min(rest.len());
                    let (batch, after) = rest.split_at(take);
                    rest = after;
                    let (answer, answered) = channel();
                    submit
                        .send(Submission::new(
                            batch.to_vec(),
                            Box::new(move |results| answer.send(results).unwrap()),
                        ))
                        .expect("the engine serves");
                    for result in answered.recv().expect("answered") {
                        results_out.send(result).unwrap();
                    }
                }
            });
        }
        drop(submit);
        engine.serve(&submissions).expect("serves");
    });
    drop(results_out);
    let received: Vec<Arc<CommandResult>> = results_in.iter().collect();
    assert_eq!(received.len(), commands.len(), "one answer per command");
    let sharded = engine.sharded_groups();
    drop(engine.close().expect("closes"));

    let applied: std::collections::HashMap<(String, String), String> = received
        .iter()
        .filter(|r| status(r) == "applied" && !matches!(r.command.name(), "quote" | "balance"))
        .map(|r| ((r.merchant.clone(), r.key.clone()), r.to_json_line()))
        .collect();
    let log = tally_engine::log::CommandLog::open(&dir.join("log.redb")).expect("log");
    let mut ledger = tally_engine::core::Ledger::new();
    let mut compared = 0;
    log.replay(|logged| {
        let result = ledger.apply_shared(&logged.command, logged.now);
        ledger.clear_outbox();
        if let Some(answered) = applied.get(&(result.merchant.clone(), result.key.clone())) {
            assert_eq!(&result.to_json_line(), answered, "{}", result.key);
            compared += 1;
        }
    })
    .expect("replays");
    assert_eq!(
        compared,
        applied.len(),
        "every applied answer is in the log, once"
    );
    assert!(compared > 2_000, "most commands applied: {compared}");
    sharded
}

/// Sixteen terminals enrol the same new phones at the same instant, each by its first
/// purchase (international or national, spaced or not): every phone becomes exactly one member,
/// every terminal's answer names that member, and a restart gives the same members.
#[test]
fn many_terminals_enrolling_the_same_phones_at_once_make_one_member_each() {
    const TERMINALS: usize = 16;
    const PHONES: usize = 50;
    let dir = std::env::temp_dir().join(format!("tally-serve-enrol-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _scratch = Scratch(dir.clone());
    let written = |terminal: usize, phone: usize| match terminal % 3 {
        0 => format!("+1555{phone:07}"),
        1 => format!("(555) {:03}-{:04}", phone / 10_000, phone % 10_000),
        _ => format!("+1 555 {:03} {:04}", phone / 10_000, phone % 10_000),
    };
    let purchase = |terminal: usize, phone: usize| {
        let line = format!(
            r#"{{"merchant":"demo","terminal":"t{terminal}","txn":"p{phone}","at":"2026-01-05T12:00:00Z","purchase":{{"member":{{"phone":"{}"}},"lines":[{{"sku":"LATTE","qty":1,"unit_price":"4.50"}}],"total":"4.50"}}}}"#,
            written(terminal, phone)
        );
        tally_protocol::parse_command_line(&line).expect("a valid purchase")
    };

    let mut engine = engine_keeping_the_whole_log(&dir);
    let (submit, submissions) = sync_channel::<Submission>(4);
    let (results_out, results_in) = channel();
    std::thread::scope(|scope| {
        for terminal in 0..TERMINALS {
            let (submit, results_out) = (submit.clone(), results_out.clone());
            scope.spawn(move || {
                // Every terminal goes through the same phones, one submission each.
                for phone in 0..PHONES {
                    let (answer, answered) = channel();
                    let submission = Submission::new(
                        vec![purchase(terminal, phone)],
                        Box::new(move |results| answer.send(results).unwrap()),
                    );
                    submit.send(submission).expect("the engine serves");
                    let result = answered.recv().expect("answered").remove(0);
                    results_out.send((phone, result)).unwrap();
                }
            });
        }
        drop(submit);
        engine.serve(&submissions).expect("serves");
    });
    drop(results_out);
    let mut member_of_phone = std::collections::BTreeMap::new();
    let mut enrolments = 0;
    for (phone, result) in results_in.iter() {
        let applied = result.applied().expect("every purchase applies");
        let member = applied.member.as_ref().expect("names its member");
        enrolments += usize::from(member.enrolled);
        let first = *member_of_phone.entry(phone).or_insert(member.id);
        assert_eq!(member.id, first, "phone {phone} answered as two members");
    }
    assert_eq!(member_of_phone.len(), PHONES);
    assert_eq!(enrolments, PHONES, "one enrolment per phone");
    let ids: std::collections::BTreeSet<u64> = member_of_phone.values().copied().collect();
    assert_eq!(ids.len(), PHONES, "no two phones share a member");
    drop(engine.close().expect("closes"));

    // Replayed from the log, the same phones are the same members.
    let (mut engine, recovery) = Engine::open(&dir, Clock::Event).expect("recovers");
    assert!(
        recovery.checkpoint.is_none(),
        "recovered from the log alone"
    );
    let balance = |phone: usize| {
        let line = format!(
            r#"{{"merchant":"demo","terminal":"t0","txn":"b{phone}","at":"2026-01-05T12:00:00Z","balance":{{"member":{{"phone":"+1555{phone:07}"}}}}}}"#
        );
        tally_protocol::parse_command_line(&line).expect("a valid query")
    };
    let queries: Vec<Command> = (0..PHONES).map(balance).collect();
    let answers = serve_concurrently(&mut engine, &queries);
    for (phone, answer) in answers.iter().enumerate() {
        let member = answer.applied().and_then(|a| a.member.as_ref());
        assert_eq!(member.map(|m| m.id), Some(member_of_phone[&phone]));
    }
}
