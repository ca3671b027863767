//! Crash recovery of `tally ingest`: the process is killed (SIGKILL) again and again while it
//! ingests a synthetic command stream, restarted on the same data directory each time, and fed
//! from where its answers stopped (sometimes a little before, to send duplicates). Commands
//! that replay rejects are sent at most once before the final pass: see `History::plan_feed`.
//!
//! What must hold:
//! - a command is applied at most once: once answered `applied`, it is only ever answered
//!   `duplicate` again, with the first result as `first`;
//! - what was answered survives the crash: a final pass that resubmits every command gets
//!   `duplicate` for every command that was ever applied;
//! - the recovered state is the state of the applied commands: the balances written by the
//!   last, clean run equal those of `tally replay` over the applied commands in their order,
//!   and every answer (quotes aside) is the result `tally replay` gives the command in the
//!   stream, or a duplicate carrying that result.
//!
//! The stream interleaves two merchants that live on different shards, and runs alternate
//! between one shard and two: a log written by either recovers on the other.
//!
//! The kill times are random but seeded: the seed is printed and `TALLY_CRASH_SEED=N` runs the
//! same choices again (the interleaving with the engine still depends on timing).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use tally_engine::workload::{demo_program_of, interleaved, Rng, WorkloadConfig};
use tally_protocol::CommandKind;

/// Commands in the stream. The debug build recounts a member's lots after each command, so
/// the cost grows with the square of the busiest members' lot counts: a few thousand commands
/// keep the whole test (every restart replays the log) to seconds.
const COMMANDS: usize = 4_000;
/// Members of each of the two merchants.
const MEMBERS: u64 = 1_000;
/// Ten minutes of event time between commands: the stream spans four weeks, so pending points
/// mature, days and a month start pass, and engine ticks are logged and recovered.
const INTERVAL_MS: i64 = 10 * 60 * 1000;
/// Killed runs before the final clean one.
const KILL_CYCLES: usize = 24;
const KILL_DELAY_MS: (u64, u64) = (5, 200);
/// A killed run is given this many commands at most, so that the kills are spread over the
/// stream instead of all landing after one fast run has ingested nearly everything.
const CHUNK: (u64, u64) = (100, 1200);
/// A restarted run is fed from up to this many commands before the first unanswered one.
const MAX_OVERLAP: u64 = 8;
/// A comment and a blank line go before every this many commands: they get no answer.
const COMMENT_EVERY: usize = 97;

/// Bounds on every wait, so that a hung engine fails the test instead of hanging it.
const FIRST_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
const AFTER_KILL_TIMEOUT: Duration = Duration::from_secs(10);
const CLEAN_RUN_TIMEOUT: Duration = Duration::from_secs(40);
const POLL: Duration = Duration::from_millis(2);

#[test]
fn ingest_recovers_from_repeated_kills_without_losing_or_repeating_commands() {
    let seed = seed();
    println!("crash test seed {seed} (run again with TALLY_CRASH_SEED={seed})");
    let started = Instant::now();
    let setup = Setup::new();
    let outcome = std::panic::catch_unwind(|| run_scenario(&setup, seed));
    println!("crash test took {:.1} s", started.elapsed().as_secs_f64());
    match outcome {
        Ok(()) => setup.remove(),
        Err(panic) => {
            eprintln!("crash test files kept in {}", setup.dir.display());
            std::panic::resume_unwind(panic);
        }
    }
}

fn run_scenario(setup: &Setup, seed: u64) {
    let mut rng = Rng::new(seed);
    // What the engine must answer, command by command, and the balances it must end with.
    let whole_stream: Vec<usize> = (0..setup.stream.len()).collect();
    let reference = replay(setup, "reference", &whole_stream);
    let mut history = History::new(&setup.stream, reference.results.clone());

    let mut start = 0;
    for run in 0..KILL_CYCLES {
        start = killed_run(setup, &mut history, &mut rng, run, start);
    }
    let final_balances = final_run(setup, &mut history, KILL_CYCLES, start);
    clean_restart(setup, &mut history, KILL_CYCLES + 1, &final_balances);

    // The state is that of the applied commands, in stream order (see `History::plan_feed`).
    let applied = replay(setup, "applied", &history.applied_in_stream_order());
    let replayed = [
        ("the applied commands", &applied.balances),
        ("the whole stream", &reference.balances),
    ];
    for (what, balances) in replayed {
        history.expect_same_csv(
            &format!("balances of ingest and of a replay of {what}"),
            &final_balances,
            balances,
        );
    }

    final_pass(setup, &mut history, KILL_CYCLES + 2, &whole_stream);
    println!("answers: {:?}", history.counts);
    history.assert_no_violations();
}

/// Starts a run fed from `start`, kills it after a random delay and takes in its answers;
/// returns where the next run starts: at the first command left unanswered, or a few before
/// it so that the engine sees commands it has already answered.
fn killed_run(
    setup: &Setup,
    history: &mut History,
    rng: &mut Rng,
    run: usize,
    start: usize,
) -> usize {
    let end = (start + between(rng, CHUNK) as usize).min(setup.stream.len());
    let feed = history.plan_feed(start, end);
    let delay = Duration::from_millis(between(rng, KILL_DELAY_MS));
    // Timed from the start, a kill often lands in recovery or program installation; timed
    // from the first answer, it lands in the middle of ingestion.
    let from_first_answer = rng.below(2) == 0 && !feed.is_empty();
    let mut process = Ingest::start(setup, run, feed.clone(), Input::KeepOpen, None);
    let answered_in_time = !from_first_answer || process.wait_for_first_answer();
    thread::sleep(delay);
    let finished = process.kill();
    let timed_from = if from_first_answer {
        "the first answer"
    } else {
        "the start"
    };
    let late = if answered_in_time {
        ""
    } else {
        " (none in time)"
    };
    println!(
        "run {run:2}: {:4} commands from {start:4}, killed {:3} ms after {timed_from}, \
         {:4} answered{late}",
        feed.len(),
        delay.as_millis(),
        finished.answers.len(),
    );
    if let Some(status) = finished.exited_by_itself {
        history.violation(format!(
            "run {run}: ingest exited by itself ({status}) while its input was open; stderr:\n{}",
            setup.stderr_of(run)
        ));
    }
    history.record_run(run, &feed, &finished, Phase::Crashes);
    let first_unanswered = feed.get(finished.answers.len()).copied().unwrap_or(end);
    first_unanswered.saturating_sub(rng.below(MAX_OVERLAP + 1) as usize)
}

/// The final run is fed to the end of the stream and exits by itself, writing the balances.
fn final_run(setup: &Setup, history: &mut History, run: usize, start: usize) -> PathBuf {
    let balances = setup.dir.join("final-balances.csv");
    let feed = history.plan_feed(start, setup.stream.len());
    let finished =
        Ingest::start(setup, run, feed.clone(), Input::Close, Some(&balances)).wait_for_exit();
    println!(
        "run {run:2}: {:4} commands from {start:4} to the end",
        feed.len()
    );
    history.expect_clean_exit(setup, run, &finished);
    history.expect_all_answered(run, &feed, &finished);
    history.record_run(run, &feed, &finished, Phase::Crashes);
    history.expect_every_applied_command_answered();
    balances
}

/// Recovery alone, after a clean stop, rebuilds the same balances.
fn clean_restart(setup: &Setup, history: &mut History, run: usize, final_balances: &Path) {
    let balances = setup.dir.join("recovered-balances.csv");
    let finished =
        Ingest::start(setup, run, Vec::new(), Input::Empty, Some(&balances)).wait_for_exit();
    history.expect_clean_exit(setup, run, &finished);
    history.expect_all_answered(run, &[], &finished);
    history.expect_same_csv("balances after a clean restart", final_balances, &balances);
}

/// Resubmitting everything applies nothing twice: every applied command is a duplicate.
fn final_pass(setup: &Setup, history: &mut History, run: usize, whole_stream: &[usize]) {
    let finished =
        Ingest::start(setup, run, whole_stream.to_vec(), Input::Close, None).wait_for_exit();
    history.expect_clean_exit(setup, run, &finished);
    history.expect_all_answered(run, whole_stream, &finished);
    history.record_run(run, whole_stream, &finished, Phase::FinalPass);
    // An even run has two shards, and the whole stream names both merchants.
    assert_eq!(run % 2, 0, "the final pass runs on two shards");
    let stderr = setup.stderr_of(run);
    let sharded = stderr
        .lines()
        .find_map(|line| {
            line.strip_suffix(
                " groups applied on 2 shards (the others named one shard's merchants only)",
            )
        })
        .and_then(|count| count.parse::<u64>().ok());
    assert!(
        sharded.is_some_and(|count| count > 0),
        "the final pass applied groups on both shards: {stderr}"
    );
}

fn between(rng: &mut Rng, (low, high): (u64, u64)) -> u64 {
    low + rng.below(high - low + 1)
}

fn seed() -> u64 {
    match std::env::var("TALLY_CRASH_SEED") {
        Ok(text) => text.trim().parse().expect("TALLY_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos() as u64,
    }
}

// ---- the files and the command stream ----

/// The temporary directory, the program files and the command stream.
struct Setup {
    dir: PathBuf,
    programs: Vec<PathBuf>,
    data: PathBuf,
    stream: Arc<Stream>,
}

/// The commands as JSON lines (with their newline), their keys, and which are quotes.
struct Stream {
    lines: Vec<String>,
    keys: Vec<String>,
    quotes: Vec<bool>,
}

impl Stream {
    fn len(&self) -> usize {
        self.lines.len()
    }
}

impl Setup {
    fn new() -> Setup {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("tally-crash-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test directory");
        let programs = MERCHANTS
            .iter()
            .map(|&merchant| {
                let program = dir.join(format!("{merchant}.toml"));
                std::fs::write(&program, demo_program_of(merchant)).expect("write the program");
                program
            })
            .collect();
        Setup {
            data: dir.join("data"),
            programs,
            stream: Arc::new(generate_stream()),
            dir,
        }
    }

    fn stderr_path(&self, run: usize) -> PathBuf {
        self.dir.join(format!("run-{run:02}.stderr"))
    }

    fn stderr_of(&self, run: usize) -> String {
        std::fs::read_to_string(self.stderr_path(run)).unwrap_or_default()
    }

    fn remove(&self) {
        // Best effort: a leftover temporary directory must not fail a passing test.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two merchants that `Shards` puts on different shards of two.
const MERCHANTS: [&str; 2] = ["demo", "south"];

/// The demo workloads of both merchants, interleaved, ending with a quote: a quote is always
/// applied and changes nothing, so it moves the engine clock to the end of the stream in every
/// run that reaches it and in every replay (the final engine tick then does the same work in
/// all of them).
fn generate_stream() -> Stream {
    let shards = tally_engine::shards::Shards::new(2);
    assert_ne!(
        shards.shard_of(MERCHANTS[0]),
        shards.shard_of(MERCHANTS[1]),
        "the two merchants are on different shards"
    );
    let config = WorkloadConfig {
        interval_ms: INTERVAL_MS,
        ..WorkloadConfig::demo(MEMBERS)
    };
    let mut traffic = interleaved(&MERCHANTS, &config);
    let mut commands: Vec<_> = traffic.by_ref().take(COMMANDS).collect();
    let closing_quote = traffic
        .take(10_000)
        .find(|command| command.kind() == CommandKind::Quote)
        .expect("the demo workload yields quotes");
    commands.push(closing_quote);
    Stream {
        lines: commands.iter().map(|c| c.to_json_line() + "\n").collect(),
        keys: commands.iter().map(|c| c.key.to_string()).collect(),
        quotes: commands
            .iter()
            .map(|c| c.kind() == CommandKind::Quote)
            .collect(),
    }
}

// ---- one run of `tally ingest` ----

/// What happens to the engine's standard input once the commands are written.
#[derive(Clone, Copy, PartialEq)]
enum Input {
    /// Stays open until the run is killed: the engine must not stop by itself.
    KeepOpen,
    /// Is closed: the engine finishes and exits.
    Close,
    /// Nothing at all: the engine only recovers.
    Empty,
}

struct Ingest {
    run: usize,
    child: Child,
    answers: Receiver<String>,
    received: Vec<String>,
    feeder: Option<JoinHandle<Fed>>,
    /// Where the answers are kept, to read when the test fails.
    answers_path: PathBuf,
}

/// How far the feeder got: the first `count` commands of the run were written whole.
struct Fed {
    count: usize,
    /// Kept open until the run ends, for `Input::KeepOpen`.
    _stdin: Option<ChildStdin>,
}

/// A run that has ended: its complete answer lines, parsed, in order.
struct Finished {
    answers: Vec<Value>,
    fed: usize,
    exit: ExitStatus,
    /// Set when a run that was to be killed had already exited.
    exited_by_itself: Option<ExitStatus>,
    unreadable: Vec<String>,
}

impl Ingest {
    /// Starts `tally ingest` and a thread writing the commands `feed` (stream indices) to it.
    fn start(
        setup: &Setup,
        run: usize,
        feed: Vec<usize>,
        input: Input,
        balances: Option<&Path>,
    ) -> Ingest {
        let stderr = File::create(setup.stderr_path(run)).expect("create the stderr file");
        let mut process = Process::new(env!("CARGO_BIN_EXE_tally"));
        process
            .arg("ingest")
            .arg("--data")
            .arg(&setup.data)
            .args(
                setup
                    .programs
                    .iter()
                    .flat_map(|p| [Path::new("--program"), p]),
            )
            .args(["--clock", "event"])
            .args(["--shards", ["2", "1"][run % 2]])
            // Checkpoints and compaction happen while the process is being killed too.
            .args(["--checkpoint-every", "700"])
            .stdin(if input == Input::Empty {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(path) = balances {
            process.arg("--balances-out").arg(path);
        }
        let mut child = process.spawn().expect("start tally ingest");
        let (sender, answers) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        thread::spawn(move || read_answers(stdout, sender));
        let feeder = child.stdin.take().map(|stdin| {
            let stream = Arc::clone(&setup.stream);
            thread::spawn(move || feed_commands(stdin, &stream, &feed, input == Input::Close))
        });
        let answers_path = setup.dir.join(format!("run-{run:02}.answers"));
        Ingest {
            run,
            child,
            answers,
            received: Vec::new(),
            feeder,
            answers_path,
        }
    }

    /// Waits (bounded) for the first answer; false if none came in time.
    fn wait_for_first_answer(&mut self) -> bool {
        match self.answers.recv_timeout(FIRST_ANSWER_TIMEOUT) {
            Ok(line) => {
                self.received.push(line);
                true
            }
            Err(_) => false,
        }
    }

    /// SIGKILL, then everything the engine wrote before it died.
    fn kill(mut self) -> Finished {
        let exited_by_itself = self.child.try_wait().expect("poll the child");
        if exited_by_itself.is_none() {
            self.child.kill().expect("kill tally ingest");
        }
        let what = format!("run {}: tally ingest, killed,", self.run);
        let exit = wait_within(&mut self.child, AFTER_KILL_TIMEOUT, &what);
        let mut finished = self.collect(exit);
        finished.exited_by_itself = exited_by_itself;
        finished
    }

    /// Waits (bounded) for the engine to finish its input and exit.
    fn wait_for_exit(mut self) -> Finished {
        let what = format!("run {}: tally ingest", self.run);
        let exit = wait_within(&mut self.child, CLEAN_RUN_TIMEOUT, &what);
        self.collect(exit)
    }

    /// Reads the rest of the answers (the pipe closes when the process is gone) and how far
    /// the feeder got.
    fn collect(mut self, exit: ExitStatus) -> Finished {
        let deadline = Instant::now() + AFTER_KILL_TIMEOUT;
        loop {
            match self.answers.recv_timeout(POLL) {
                Ok(line) => self.received.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    assert!(
                        Instant::now() < deadline,
                        "run {}: stdout stayed open",
                        self.run
                    )
                }
            }
        }
        let fed = match self.feeder.take() {
            Some(feeder) => join_within(feeder, deadline, self.run).count,
            None => 0,
        };
        std::fs::write(&self.answers_path, self.received.concat()).expect("keep the answers");
        let mut answers = Vec::with_capacity(self.received.len());
        let mut unreadable = Vec::new();
        for line in self.received {
            match serde_json::from_str::<Value>(&line) {
                Ok(value) => answers.push(value),
                Err(error) => unreadable.push(format!("{error}: {}", line.trim_end())),
            }
        }
        Finished {
            answers,
            fed,
            exit,
            exited_by_itself: None,
            unreadable,
        }
    }
}

/// Sends every complete line of the engine's output. A last line without its newline was
/// cut by the kill: it is not an answer.
fn read_answers(stdout: ChildStdout, sender: Sender<String>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) if !line.ends_with('\n') => return,
            Ok(_) => {
                if sender.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes the commands, with comments and blank lines before some of them. After a kill the
/// writes fail (broken pipe), which ends the feeder.
fn feed_commands(mut stdin: ChildStdin, stream: &Stream, feed: &[usize], close: bool) -> Fed {
    for (count, &index) in feed.iter().enumerate() {
        let mut text = String::new();
        if index % COMMENT_EVERY == 0 {
            text.push_str(&format!("# command {index} follows\n\n"));
        }
        text.push_str(&stream.lines[index]);
        if stdin.write_all(text.as_bytes()).is_err() {
            return Fed {
                count,
                _stdin: None,
            };
        }
    }
    Fed {
        count: feed.len(),
        _stdin: if close { None } else { Some(stdin) },
    }
}

fn wait_within(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {timeout:?}");
        }
        thread::sleep(POLL);
    }
}

fn join_within<T>(handle: JoinHandle<T>, deadline: Instant, run: usize) -> T {
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "run {run}: the feeder is stuck");
        thread::sleep(POLL);
    }
    handle.join().expect("the feeder does not panic")
}

// ---- what the answers tell ----

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// The killed runs and the final run: every answer is the command's first evaluation or
    /// a duplicate, so it must equal the reference.
    Crashes,
    /// Everything again: rejected commands are evaluated afresh against the final state.
    FinalPass,
}

struct History {
    stream: Arc<Stream>,
    /// `tally replay`'s result for each command of the stream, applied in stream order.
    reference: Vec<Value>,
    /// Given to a run that may have evaluated it (written to its input).
    fed: Vec<bool>,
    /// Answered `applied`, or `duplicate` (so applied by a run killed before answering).
    applied: Vec<bool>,
    /// Answered `applied` (not counting quotes, which are never remembered).
    answered_applied: Vec<bool>,
    violations: Vec<String>,
    counts: BTreeMap<String, usize>,
}

impl History {
    fn new(stream: &Arc<Stream>, reference: Vec<Value>) -> History {
        let len = stream.len();
        assert_eq!(
            reference.len(),
            len,
            "the reference has one result per command"
        );
        History {
            stream: Arc::clone(stream),
            reference,
            fed: vec![false; len],
            applied: vec![false; len],
            answered_applied: vec![false; len],
            violations: Vec::new(),
            counts: BTreeMap::new(),
        }
    }

    fn violation(&mut self, text: String) {
        self.violations.push(text);
    }

    fn applies(&self, index: usize) -> bool {
        self.reference[index]["status"] == "applied"
    }

    /// The commands a run is given: those of `start..end`, less the ones that the reference
    /// rejects and that an earlier run may already have evaluated. A rejection is not
    /// remembered, so sending such a command again would evaluate it afresh against a later
    /// state, where it may well apply (points have matured meanwhile), and the order of
    /// application would no longer be the stream's. Left out, every command is applied, if
    /// at all, at its first evaluation, in stream order, and replay is an exact reference.
    fn plan_feed(&self, start: usize, end: usize) -> Vec<usize> {
        (start..end)
            .filter(|&index| self.applies(index) || !self.fed[index])
            .collect()
    }

    /// Takes in a run's answers: the n-th answer is for the n-th command it was given.
    fn record_run(&mut self, run: usize, feed: &[usize], finished: &Finished, phase: Phase) {
        for line in &finished.unreadable {
            self.violation(format!("run {run}: an answer is not JSON: {line}"));
        }
        if finished.answers.len() > feed.len() {
            self.violation(format!(
                "run {run}: {} answers to {} commands",
                finished.answers.len(),
                feed.len()
            ));
        }
        for (&index, answer) in feed.iter().zip(&finished.answers) {
            self.record_answer(run, index, answer, phase);
        }
        for &index in &feed[..finished.fed.min(feed.len())] {
            self.fed[index] = true;
        }
    }

    fn record_answer(&mut self, run: usize, index: usize, answer: &Value, phase: Phase) {
        let stream = Arc::clone(&self.stream);
        let key = &stream.keys[index];
        if answer["key"].as_str() != Some(key) {
            self.violation(format!(
                "run {run}: expected the answer for {key}, got {answer}"
            ));
            return;
        }
        let status = answer["status"].as_str().unwrap_or("(none)").to_string();
        *self.counts.entry(status.clone()).or_default() += 1;
        let expected = self.reference[index].clone();
        match status.as_str() {
            // Quotes are never remembered: each one is evaluated afresh, against whatever
            // state the engine has then.
            "applied" if stream.quotes[index] => {}
            _ if stream.quotes[index] => {
                self.violation(format!("run {run}: quote {key} answered {answer}"));
            }
            "applied" => {
                if self.answered_applied[index] {
                    self.violation(format!("run {run}: {key} answered applied a second time"));
                } else if self.applied[index] {
                    self.violation(format!(
                        "run {run}: {key}, a duplicate before, is applied again"
                    ));
                } else if phase == Phase::Crashes && *answer != expected {
                    self.violation(format!(
                        "run {run}: {key}: applied, but not as replay applies it: {}",
                        json_difference("", answer, &expected)
                    ));
                }
                self.answered_applied[index] = true;
                self.applied[index] = true;
            }
            "duplicate" => {
                if answer["first"] != expected || expected["status"] != "applied" {
                    self.violation(format!(
                        "run {run}: {key}: a duplicate whose first is not replay's result: {}",
                        json_difference("", &answer["first"], &expected)
                    ));
                }
                self.applied[index] = true;
            }
            "rejected" => {
                if self.applied[index] {
                    self.violation(format!(
                        "run {run}: {key}, applied before, is now rejected: {answer}"
                    ));
                } else if phase == Phase::Crashes && *answer != expected {
                    self.violation(format!(
                        "run {run}: {key}: rejected, but not as replay rejects it: {}",
                        json_difference("", answer, &expected)
                    ));
                }
            }
            _ => self.violation(format!("run {run}: {key}: an unknown status: {answer}")),
        }
    }

    fn expect_clean_exit(&mut self, setup: &Setup, run: usize, finished: &Finished) {
        if !finished.exit.success() {
            self.violation(format!(
                "run {run}: tally ingest exited with {}; stderr:\n{}",
                finished.exit,
                setup.stderr_of(run)
            ));
        }
    }

    fn expect_all_answered(&mut self, run: usize, feed: &[usize], finished: &Finished) {
        if finished.answers.len() != feed.len() {
            self.violation(format!(
                "run {run}: {} commands in a closed input, {} answers",
                feed.len(),
                finished.answers.len()
            ));
        }
    }

    /// Once the final run is over, every command the reference applies has been answered
    /// `applied` or `duplicate` (that no other was is checked answer by answer).
    fn expect_every_applied_command_answered(&mut self) {
        let stream = Arc::clone(&self.stream);
        for index in 0..stream.len() {
            if self.applies(index) && !stream.quotes[index] && !self.applied[index] {
                self.violation(format!("{} was never answered applied", stream.keys[index]));
            }
        }
    }

    /// The applied commands in stream order, which is the order they were applied in (see
    /// `plan_feed`), then the closing quote that sets the final clock.
    fn applied_in_stream_order(&self) -> Vec<usize> {
        let last = self.stream.len() - 1;
        (0..last)
            .filter(|&index| self.applied[index])
            .chain([last])
            .collect()
    }

    fn expect_same_csv(&mut self, what: &str, expected: &Path, actual: &Path) {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .unwrap_or_else(|error| format!("(cannot read {}: {error})", path.display()))
        };
        let (expected_text, actual_text) = (read(expected), read(actual));
        if let Some(difference) =
            first_difference((expected, &expected_text), (actual, &actual_text))
        {
            self.violation(format!(
                "{what} differ ({} and {} lines); {difference}",
                expected_text.lines().count(),
                actual_text.lines().count()
            ));
        }
    }

    fn assert_no_violations(&self) {
        assert!(
            self.violations.is_empty(),
            "{} contract violations; the first ones:\n{}",
            self.violations.len(),
            self.violations
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Where two texts first differ, line by line, naming the files they come from.
fn first_difference(left: (&Path, &str), right: (&Path, &str)) -> Option<String> {
    if left.1 == right.1 {
        return None;
    }
    let shortest = left.1.lines().count().min(right.1.lines().count());
    let (number, (a, b)) = (left.1.lines().zip(right.1.lines()))
        .enumerate()
        .find(|(_, (a, b))| a != b)
        .unwrap_or((shortest, ("(end)", "(end)")));
    let name = |path: &Path| {
        path.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    Some(format!(
        "first at line {}:\n  {}: {a}\n  {}: {b}",
        number + 1,
        name(left.0),
        name(right.0)
    ))
}

/// The first field where an answer differs from replay's result: `path: ingest / replay`.
fn json_difference(path: &str, ingest: &Value, replay: &Value) -> String {
    let inner = match (ingest, replay) {
        (Value::Object(left), Value::Object(right)) => {
            let keys: BTreeSet<&String> = left.keys().chain(right.keys()).collect();
            keys.into_iter().find_map(|key| {
                let (a, b) = (&ingest[key.as_str()], &replay[key.as_str()]);
                (a != b).then(|| json_difference(&format!("{path}.{key}"), a, b))
            })
        }
        (Value::Array(left), Value::Array(right)) if left.len() == right.len() => {
            (left.iter().zip(right).enumerate()).find_map(|(index, (a, b))| {
                (a != b).then(|| json_difference(&format!("{path}[{index}]"), a, b))
            })
        }
        _ => None,
    };
    inner.unwrap_or_else(|| format!("{path}: ingest {ingest}, replay {replay}"))
}

// ---- the offline reference ----

struct Replayed {
    balances: PathBuf,
    /// The result of each replayed command, in order, the engine's ticks left out.
    results: Vec<Value>,
}

/// `tally replay` over the given commands of the stream, in this order.
fn replay(setup: &Setup, name: &str, order: &[usize]) -> Replayed {
    let input = setup.dir.join(format!("{name}.jsonl"));
    let text: String = order
        .iter()
        .map(|&index| setup.stream.lines[index].as_str())
        .collect();
    std::fs::write(&input, text).expect("write the replay input");
    let balances = setup.dir.join(format!("{name}-balances.csv"));
    let results_path = setup.dir.join(format!("{name}-results.jsonl"));
    let mut child = Process::new(env!("CARGO_BIN_EXE_tally"))
        .arg("replay")
        .args(
            setup
                .programs
                .iter()
                .flat_map(|p| [Path::new("--program"), p]),
        )
        .arg("--input")
        .arg(&input)
        .arg("--balances-out")
        .arg(&balances)
        .arg("--results-out")
        .arg(&results_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tally replay");
    let status = wait_within(&mut child, CLEAN_RUN_TIMEOUT, "tally replay");
    assert!(status.success(), "tally replay failed: {status}");
    let results: Vec<Value> = std::fs::read_to_string(&results_path)
        .expect("read the replay results")
        .lines()
        .map(|line| serde_json::from_str(line).expect("replay results are JSON"))
        .filter(|result: &Value| result["command"] != "tick")
        .collect();
    assert_eq!(
        results.len(),
        order.len(),
        "replay answers every command once"
    );
    Replayed { balances, results }
}
