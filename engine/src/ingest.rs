//! The durable engine: the same core, with every change logged before it is acknowledged.
//!
//! Commands are read and parsed on one thread, applied in groups on another (a group naming
//! several shards' merchants on those shards: `shards`), written to the log by a third (the
//! committer) and their results encoded and written on a fourth. A group
//! is whatever arrived while the previous one was being applied (at most
//! `MAX_GROUP_COMMANDS`, `MAX_SERVE_GROUP_COMMANDS` when serving), so it grows under load and a
//! lone command is committed at once.
//! While the committer makes group `n` durable in one transaction, group `n + 1` is applied;
//! only once a group's commit is durable are its results handed on. An error while logging
//! stops the engine: nothing that is not durable is acknowledged.

use std::cell::Cell;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tally_protocol::{
    parse_command_line, Applied, Body, Command, CommandKind, CommandResult, Decimal, IdemKey,
    LoadProgram, LotSlice, MemberView, Origin, StatementEntry, StatementPage, Status, Wallet,
    ENGINE_ADMIN,
};

use crate::checkpoint::{self, CheckpointError};
use crate::commit::{Committer, CommitterPriority, Job};
use crate::core::{Ledger, StatementPlan};
use crate::lines::{BoundedLines, MAX_LINE_BYTES};
use crate::log::{CommandLog, LogError, Logged, LoggedEntry};
use crate::money::from_minor;
use crate::program::parse_and_compile;
use crate::replay::{parse_rejection, tick_command, tick_if_due, unreadable};
use crate::shards::{self, Incoming, Item, Shards, Step};
use crate::snapshot_stream::{RowSink, Streams};
use crate::Timestamp;

/// The most commands applied and committed as one group.
pub const MAX_GROUP_COMMANDS: usize = 4096;
/// The most commands of one group under `serve`. The pipeline overlaps a group's commit with
/// the next group's apply only if commands are waiting: clients send their next frames when
/// answered, so a group that took every command in flight left the next one nothing, and
/// commit and apply took turns. At 1,024, ten alternating runs of `tally-loadgen baseline`
/// (4,096 commands in flight) went from a median of 99,500 to 110,200 durable commands/s.
pub const MAX_SERVE_GROUP_COMMANDS: usize = 1024;
/// The results writer keeps a buffer of up to this size from one group to the next.
const RESULTS_TEXT_KEPT_BYTES: usize = 16 << 20;
/// Lines read ahead of the engine: bounds memory when the input is faster than the disk. One
/// largest group: the reader, almost three times as fast as the engine, fills it again while the
/// engine applies the group it took. Four groups held 20–30 MB more in fresh memory, which
/// costs here (`allocator.rs`), for no speed.
pub const MAX_LINES_READ_AHEAD: usize = MAX_GROUP_COMMANDS;
/// Durable groups whose results wait for the writer: bounds memory when the output is slow.
pub const RESULT_GROUPS_AHEAD: usize = 4;
/// A checkpoint is taken after this many logged commands (and when the input ends).
pub const CHECKPOINT_EVERY_COMMANDS: u64 = 1_000_000;

/// Where the engine's time comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clock {
    /// The wall clock: a live engine.
    Wall,
    /// The latest event time seen: imports and tests, comparable with `tally replay`.
    Event,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("reading commands: {0}")]
    Input(std::io::Error),
    #[error("writing results: {0}")]
    Output(std::io::Error),
    #[error("program: {0}")]
    Program(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// What recovery found.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The checkpoint loaded, if there was one.
    pub checkpoint: Option<CheckpointLoaded>,
    /// Batches and commands replayed from the log (after the checkpoint).
    pub batches: u64,
    pub commands: u64,
    pub members: u64,
    pub elapsed: Duration,
    pub digest: u128,
}

#[derive(Debug, Clone)]
pub struct CheckpointLoaded {
    pub last_batch: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// What the checkpoint writer answers: the batch the log may be compacted before (or why
/// the checkpoint failed), and the checkpoint's memory.
type Written = (Result<u64, CheckpointError>, Vec<Vec<u8>>);

/// Checkpoints taken while ingesting: at most one being written at a time, on its own thread.
struct Checkpoints {
    dir: PathBuf,
    every_commands: u64,
    commands_since: u64,
    /// Older checkpoints kept for `--as-of` (the log is kept from the oldest of them on).
    keep: usize,
    /// The writer's answer once the new checkpoint is durable: the batch the log may be
    /// compacted before, and the checkpoint's memory.
    in_flight: Option<Receiver<Written>>,
    /// The last checkpoint's memory, written into by the next one: as large as a
    /// checkpoint, which every checkpoint needs at its peak anyway; kept, it is memory
    /// already touched, so the engine's pause is not spent on the kernel's first touch.
    buffers: Vec<Vec<u8>>,
    /// Background checkpoints that failed (the log kept everything; the next one retries).
    failed: Vec<String>,
}

/// Commands submitted together, and what to do with their results once they are durable
/// (called on the engine thread: it must not block, e.g. it sends to the connection's task).
pub struct Submission {
    pub commands: Vec<Incoming>,
    pub reply: Reply,
    /// Set for a snapshot request (one `snapshot` command): where its rows go, chunk by
    /// chunk, before `reply` gets its result (`snapshot_stream`).
    pub rows: Option<Box<dyn RowSink>>,
}

impl Submission {
    /// Commands whose results go to `reply`, made ready on the caller's thread.
    pub fn new(commands: Vec<Command>, reply: Reply) -> Submission {
        Submission {
            commands: commands
                .into_iter()
                .map(|command| Incoming::new(command, None))
                .collect(),
            reply,
            rows: None,
        }
    }

    /// A snapshot request: its rows go to `rows`, then its result to `reply`.
    pub fn snapshot(command: Command, reply: Reply, rows: Box<dyn RowSink>) -> Submission {
        Submission {
            rows: Some(rows),
            ..Submission::new(vec![command], reply)
        }
    }
}

/// Hands a submission's results on once they are durable.
pub type Reply = Box<dyn FnOnce(Vec<Arc<CommandResult>>) + Send>;

/// One group of submissions, durable: what `Engine::serve_observed` reports.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitted {
    pub submissions: usize,
    pub commands: usize,
    /// Commands (and engine ticks) written to the log.
    pub logged: usize,
    /// From the group's start until its commands were applied in memory.
    pub applied: Duration,
    /// From the group's start until the log write was durable.
    pub committed: Duration,
    /// Whether the group's commands were applied on their merchants' shards.
    pub sharded: bool,
}

/// A group's answers once the front door's commands are applied, waiting for the commit.
struct Served {
    replies: Vec<(Reply, Vec<Answer>)>,
    started: Instant,
    applied: Duration,
    commands: usize,
    logged: usize,
    sharded: bool,
}

/// How long `next_group` may wait for a first item.
#[derive(Debug, Clone, Copy)]
enum Wait {
    No,
    Forever,
    UpTo(Duration),
}

/// An idle engine with snapshots streaming looks for commands this often while every
/// snapshot's reader is full.
const SNAPSHOT_IDLE_WAIT: Duration = Duration::from_millis(1);
/// While a snapshot streams, the engine waiting for a commit looks this often whether a
/// chunk is due.
const COMMIT_POLL_WHILE_STREAMING: Duration = Duration::from_millis(1);

/// What the input has for the engine now.
enum Next<G> {
    Group(G),
    /// Nothing yet (only when asked not to wait).
    Nothing,
    /// The input is closed and drained.
    End,
}

/// The next group from `queue` into `group` (empty; a buffer kept from an earlier group):
/// whatever is there, up to `max_commands` commands (`commands` counts an item's), waiting
/// for a first item as `wait` says.
fn next_group<T>(
    queue: &Receiver<T>,
    wait: Wait,
    mut group: Vec<T>,
    commands: impl Fn(&T) -> usize,
    max_commands: usize,
) -> Next<Vec<T>> {
    debug_assert!(group.is_empty(), "a group starts empty");
    let mut counted = 0;
    let first = match wait {
        Wait::No => None,
        Wait::Forever => match queue.recv() {
            Ok(first) => Some(first),
            Err(_) => return Next::End,
        },
        Wait::UpTo(limit) => match queue.recv_timeout(limit) {
            Ok(first) => Some(first),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Next::End,
        },
    };
    if let Some(first) = first {
        counted += commands(&first);
        group.push(first);
    }
    while counted < max_commands {
        match queue.try_recv() {
            Ok(item) => {
                counted += commands(&item);
                group.push(item);
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) if group.is_empty() => return Next::End,
            Err(TryRecvError::Disconnected) => break,
        }
    }
    match group.is_empty() {
        true => Next::Nothing,
        false => Next::Group(group),
    }
}

/// Applies a logged command again (recovery, `--as-of`): it applied when it was logged, and
/// the core is deterministic, so it must apply again. Its entries are in the log already.
pub(crate) fn reapply(ledger: &mut Ledger, logged: &Logged) {
    let result = ledger.apply_shared(&logged.command, logged.now);
    ledger.clear_outbox();
    assert!(
        matches!(result.status, Status::Applied(_)),
        "a logged command must apply again on replay: {result:?}"
    );
}

/// A line read: its command and the line itself if the log is to keep it as it is
/// (`kept_line`), or the line's rejection.
type Parsed = Result<Incoming, Box<CommandResult>>;

/// Lines up to this long go to the log as they were read; longer ones (rare: orders of
/// hundreds of lines, padding) are encoded again from their command, so that lines read ahead
/// and waiting for the log hold at most this much each beyond their commands.
pub const KEPT_LINE_MAX_BYTES: usize = 4096;

fn kept_line(line: String) -> Option<String> {
    let trimmed = line.trim();
    if trimmed.len() > KEPT_LINE_MAX_BYTES {
        None
    } else if trimmed.len() == line.len() {
        Some(line)
    } else {
        Some(trimmed.to_string())
    }
}

/// Encodes and writes results, group by group, in the order the groups became durable.
/// A result `ResultsWritten::Rejected` writes: a rejection, or a query's answer.
fn asked_for(result: &CommandResult) -> bool {
    matches!(result.status, Status::Rejected { .. })
        || matches!(
            result.command,
            CommandKind::Quote | CommandKind::Statement | CommandKind::Balance
        )
}

fn write_results(
    durable: &Receiver<Vec<Arc<CommandResult>>>,
    output: &mut impl Write,
    written: ResultsWritten,
) -> Result<(), IngestError> {
    // One group's lines, written at once; the buffer is kept for the next group.
    let mut text = Vec::new();
    for group in durable {
        let wanted = group
            .iter()
            .filter(|result| written == ResultsWritten::All || asked_for(result));
        for result in wanted {
            result.write_json(&mut text);
            text.push(b'\n');
        }
        output.write_all(&text).map_err(IngestError::Output)?;
        output.flush().map_err(IngestError::Output)?;
        text = crate::emptied(text, RESULTS_TEXT_KEPT_BYTES);
    }
    Ok(())
}

/// A command's answer, ready or (a statement) to be read from the log once the group is
/// durable.
enum Answer {
    Ready(Arc<CommandResult>),
    Statement(Box<(Command, StatementPlan)>),
}

fn statement_entry(entry: LoggedEntry, minor_units: u32) -> StatementEntry {
    let amount = match entry.wallet {
        Wallet::Points => Decimal::from(entry.amount),
        Wallet::Credit => from_minor(entry.amount, minor_units),
    };
    StatementEntry {
        seq: entry.seq,
        at: chrono::DateTime::from_timestamp_micros(entry.at_micros)
            .expect("logged times are in range"),
        command: entry.command,
        wallet: entry.wallet,
        kind: entry.kind,
        amount,
        rule: entry.rule.map(tally_protocol::Name::from),
        program_version: entry.program_version,
        lots: entry
            .lots
            .into_iter()
            .map(|(lot, points)| LotSlice { lot, points })
            .collect(),
    }
}

/// Logs what a command's step changed (the tick due before it, then the command) and gives
/// its answer.
fn log_step(step: Step, logged: &mut Vec<Logged>) -> Answer {
    let now = step.now;
    logged.extend(step.tick.map(|(command, _)| Logged::new(now, command)));
    logged.extend(
        step.logged
            .map(|(command, json)| Logged { now, command, json }),
    );
    Answer::Ready(step.result)
}

/// A program given on the command line, checked and waiting to be installed.
struct PendingProgram {
    text: String,
    merchant: String,
    version: u32,
}

pub struct Engine {
    ledger: Ledger,
    log: Arc<CommandLog>,
    clock: Clock,
    now: Option<Timestamp>,
    /// Programs to install at the first command's time (an event clock has no time before it).
    pending_programs: Vec<PendingProgram>,
    checkpoints: Checkpoints,
    /// The log's writer thread while groups are being applied (`run`, `serve`).
    committer: Option<Committer>,
    /// Snapshots streaming to operators while commands go on.
    snapshots: Streams,
    /// Where a group's commands are applied (`shards`).
    shards: Shards,
    /// A group's commands in order, emptied after each group and kept with its room: a
    /// fresh buffer of a few megabytes each group was new memory each time.
    group_commands: Vec<Incoming>,
    /// Which results `run` writes.
    results_written: ResultsWritten,
}

/// Which results `Engine::run` writes (`tally ingest --results`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResultsWritten {
    /// Every command's, in input order.
    #[default]
    All,
    /// Only those of the commands that were rejected (unreadable lines among them) and the
    /// answers to queries (quotes, statements, balances), in input order: a bulk import's
    /// report of what did not go in. Encoding every applied result as JSON costs as much as
    /// applying it.
    Rejected,
}

impl Engine {
    /// Opens the data directory and recovers the state: the last checkpoint, then the log
    /// after it; then checks it.
    pub fn open(data: &Path, clock: Clock) -> Result<(Engine, Recovery), IngestError> {
        let started = Instant::now();
        std::fs::create_dir_all(data).map_err(|e| {
            IngestError::Log(LogError::Storage {
                path: data.display().to_string(),
                message: e.to_string(),
            })
        })?;
        let log = CommandLog::open(&data.join("log.redb"))?;
        Engine::open_log(data, log, clock, started)
    }

    /// Recovers from the checkpoint in `data` and an opened log (`CommandLog::open_faulty` in
    /// tests of IO faults).
    pub fn open_log(
        data: &Path,
        log: CommandLog,
        clock: Clock,
        started: Instant,
    ) -> Result<(Engine, Recovery), IngestError> {
        let (mut ledger, mut now, loaded) = match checkpoint::read(data)? {
            Some(found) => {
                let loaded = CheckpointLoaded {
                    last_batch: found.last_batch,
                    bytes: found.bytes,
                    elapsed: started.elapsed(),
                };
                (found.ledger, found.now, Some(loaded))
            }
            None => (Ledger::new(), None, None),
        };
        let mut commands = 0u64;
        let last_applied = loaded.as_ref().map(|c| c.last_batch);
        let batches = log.replay_after(last_applied, |logged| {
            reapply(&mut ledger, &logged);
            now = Some(now.map_or(logged.now, |t: Timestamp| t.max(logged.now)));
            commands += 1;
        })?;
        // Both checks read the whole state: on two cores at once.
        let digest = std::thread::scope(|scope| {
            let digest = scope.spawn(|| ledger.digest());
            ledger.verify();
            digest.join().expect("the digest does not panic")
        });
        let members = ledger.merchants().map(|m| m.members.len() as u64).sum();
        let recovery = Recovery {
            checkpoint: loaded,
            batches,
            commands,
            members,
            elapsed: started.elapsed(),
            digest,
        };
        let checkpoints = Checkpoints {
            dir: data.to_path_buf(),
            every_commands: CHECKPOINT_EVERY_COMMANDS,
            commands_since: commands,
            keep: 0,
            in_flight: None,
            buffers: Vec::new(),
            failed: Vec::new(),
        };
        let engine = Engine {
            ledger,
            log: Arc::new(log),
            clock,
            now,
            pending_programs: Vec::new(),
            checkpoints,
            committer: None,
            snapshots: Streams::default(),
            shards: Shards::new(shards::default_count()),
            group_commands: Vec::new(),
            results_written: ResultsWritten::All,
        };
        Ok((engine, recovery))
    }

    /// Background checkpoints that failed so far, with why.
    pub fn failed_checkpoints(&self) -> &[String] {
        &self.checkpoints.failed
    }

    /// Which results `run` writes.
    pub fn set_results_written(&mut self, written: ResultsWritten) {
        self.results_written = written;
    }

    /// Takes a checkpoint after this many logged commands; 0 takes none at all (recovery
    /// then replays the whole log).
    pub fn set_checkpoint_every(&mut self, commands: u64) {
        self.checkpoints.every_commands = commands;
    }

    /// Keeps this many older checkpoints (and the log since the oldest) so that balances
    /// at a past time can be rebuilt (`tally snapshot --as-of`).
    pub fn set_checkpoints_kept(&mut self, older: usize) {
        self.checkpoints.keep = older;
    }

    /// How many shards apply a group's commands (default: `shards::default_count`).
    pub fn set_shards(&mut self, count: usize) {
        self.shards.set_count(count);
    }

    /// Groups applied on their merchants' shards so far (the others, one after the other).
    pub fn sharded_groups(&self) -> u64 {
        self.shards.sharded_groups()
    }

    /// Rows per chunk a streamed snapshot hands to its connection between two groups.
    pub fn set_snapshot_rows_per_chunk(&mut self, rows: usize) {
        self.snapshots.set_rows_per_chunk(rows);
    }

    /// Closes the log (after any checkpoint being written) and hands back the state; the
    /// data directory can then be opened again.
    pub fn close(mut self) -> Result<Ledger, IngestError> {
        self.collect_checkpoint(true)?;
        Ok(self.ledger)
    }

    /// The log (read-only: reports scan its entries).
    pub fn log(&self) -> &CommandLog {
        &self.log
    }

    /// The last batch in the log, if any: the position the state is consistent with.
    pub fn last_batch(&self) -> Option<u64> {
        self.log.batches().checked_sub(1)
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The engine time for a command: never earlier than any time already logged.
    fn time_for(&mut self, at: Timestamp) -> Timestamp {
        let source = match self.clock {
            // The log keeps times to the microsecond: so does the clock.
            Clock::Wall => chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
            Clock::Event => at,
        };
        let now = self.now.map_or(source, |now| now.max(source));
        self.now = Some(now);
        now
    }

    /// Installs programs not installed yet (same or newer version already there: skipped),
    /// logged as `load_program` commands so that the log alone rebuilds the state. With an
    /// event clock and an empty log they are installed at the first command's time.
    pub fn install_programs(&mut self, texts: &[String]) -> Result<(), IngestError> {
        for text in texts {
            let program =
                parse_and_compile(text).map_err(|e| IngestError::Program(e.to_string()))?;
            let installed = self
                .ledger
                .merchant(&program.merchant)
                .map(|m| m.program().version);
            // The same program given twice (a file and the built-in demo, say) installs once.
            if let Some(same) = self
                .pending_programs
                .iter()
                .find(|p| p.merchant == program.merchant && p.version == program.version)
            {
                if same.text != *text {
                    return Err(IngestError::Program(format!(
                        "two different programs for merchant {} are both version {}",
                        program.merchant, program.version
                    )));
                }
                continue;
            }
            if installed.is_none_or(|version| version < program.version) {
                let (merchant, version) = (program.merchant, program.version);
                self.pending_programs.push(PendingProgram {
                    text: text.clone(),
                    merchant,
                    version,
                });
            }
        }
        // An event clock has no time of its own: install at the recovered clock, or else at
        // the first command's time.
        let now = match (self.clock, self.now) {
            (_, _) if self.pending_programs.is_empty() => return Ok(()),
            (Clock::Wall, _) => self.time_for(Utc::now()),
            (Clock::Event, Some(now)) => now,
            (Clock::Event, None) => return Ok(()),
        };
        let mut group = Vec::new();
        self.install_pending(now, &mut group)?;
        self.append(&group)
    }

    fn install_pending(
        &mut self,
        now: Timestamp,
        group: &mut Vec<Logged>,
    ) -> Result<(), IngestError> {
        for PendingProgram {
            text,
            merchant,
            version,
        } in std::mem::take(&mut self.pending_programs)
        {
            let command = Command {
                key: IdemKey::Admin {
                    admin: ENGINE_ADMIN.into(),
                    txn: program_txn(&merchant, version),
                },
                merchant,
                origin: Origin::Admin(ENGINE_ADMIN.into()),
                at: now,
                program_version: None,
                body: Body::LoadProgram(LoadProgram { program: text }),
            };
            let result = self.ledger.apply_shared(&command, now);
            match &result.status {
                Status::Applied(_) => group.push(Logged::new(now, command)),
                // Installed already under this key: nothing changed, nothing to log (a
                // logged command must apply again on recovery).
                Status::Duplicate { .. } => {}
                Status::Rejected { message, .. } => {
                    return Err(IngestError::Program(message.clone()))
                }
            }
        }
        Ok(())
    }

    /// Reads commands until the end of `input`, writing each one's result after it is durable.
    pub fn run(
        &mut self,
        input: impl BufRead + Send + 'static,
        output: &mut (impl Write + Send),
    ) -> Result<(), IngestError> {
        let (sender, lines) = sync_channel(MAX_LINES_READ_AHEAD);
        // Detached: after a failed commit the engine stops at once, even while the reader
        // waits for a line on a terminal or a pipe.
        let reader = std::thread::spawn(move || -> std::io::Result<()> {
            crate::background::background_thread();
            for (index, line) in BoundedLines::new(input, MAX_LINE_BYTES).enumerate() {
                let line_number = index as u64 + 1;
                let line = match line?.text() {
                    Ok(line) => line,
                    Err(why) => {
                        let rejection = parse_rejection(line_number, &unreadable(why));
                        if sender.send(Err(Box::new(rejection))).is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let trimmed = line.trim();
                if trimmed.is_empty() || trimmed.starts_with('#') {
                    continue;
                }
                // Parsed here, beside the engine thread, which only applies.
                let parsed = match parse_command_line(&line) {
                    Ok(command) => Ok(Incoming::new(command, kept_line(line))),
                    Err(error) => Err(Box::new(parse_rejection(line_number, &error))),
                };
                if sender.send(parsed).is_err() {
                    break;
                }
            }
            Ok(())
        });
        self.apply_groups(&lines, output)?;
        // The channel is closed: the reader has finished.
        reader
            .join()
            .expect("the reader thread does not panic")
            .map_err(IngestError::Input)?;
        self.finish()
    }

    /// Applies groups on this thread while another encodes and writes the results of the
    /// groups already durable, in order.
    fn apply_groups(
        &mut self,
        lines: &Receiver<Parsed>,
        output: &mut (impl Write + Send),
    ) -> Result<(), IngestError> {
        std::thread::scope(|scope| {
            let (answers, durable) = sync_channel::<Vec<Arc<CommandResult>>>(RESULT_GROUPS_AHEAD);
            let written = self.results_written;
            let writer = scope.spawn(move || {
                crate::background::background_thread();
                write_results(&durable, output, written)
            });
            // The lines' buffer goes back and forth between reading a group and applying it.
            let spare_lines = Cell::new(Vec::new());
            // The engine thread sets the pace: the committer writes behind it as background
            // work (with it at normal priority, 200,000 demo lines took 1.54-1.62 s, not
            // 1.27-1.33 s).
            let applied = self.pipeline(
                CommitterPriority::Background,
                |wait| {
                    let spare = spare_lines.take();
                    next_group(lines, wait, spare, |_| 1, MAX_GROUP_COMMANDS)
                },
                |engine, mut group, logged| {
                    let answers = engine.apply_parsed(&mut group, logged);
                    spare_lines.set(group);
                    answers
                },
                |engine, answered, _| {
                    let results = engine.answers(answered)?;
                    // A closed channel: the writer stopped on an output error; it reports it.
                    Ok(answers.send(results).is_ok())
                },
            );
            drop(answers);
            let written = writer.join().expect("the result writer does not panic");
            // A log error first: it is why the writer stopped, if it did.
            applied.and(written)
        })
    }

    /// Serves submissions (the network front door's batches) until every sender is gone:
    /// whatever has arrived while the previous group was applied and committed forms the
    /// next group (at most `MAX_SERVE_GROUP_COMMANDS` commands, whole submissions), which is
    /// applied in arrival order, logged in one durable write, and only then answered,
    /// submission by submission. The channel's bound is the back-pressure: a full queue makes
    /// senders wait or refuse.
    pub fn serve(&mut self, submissions: &Receiver<Submission>) -> Result<(), IngestError> {
        self.serve_observed(submissions, &mut |_| {})
    }

    /// `serve`, telling `observe` about every group once it is durable (before its replies):
    /// the server's metrics.
    pub fn serve_observed(
        &mut self,
        submissions: &Receiver<Submission>,
        observe: &mut dyn FnMut(&GroupCommitted),
    ) -> Result<(), IngestError> {
        // Every reply waits for its group's commit: a committer in the background lost the
        // cores to the connections and clients it keeps waiting, and the machine idled
        // (`docs/performance.md`).
        self.pipeline(
            CommitterPriority::Normal,
            |wait| {
                let commands = |s: &Submission| s.commands.len();
                next_group(
                    submissions,
                    wait,
                    Vec::new(),
                    commands,
                    MAX_SERVE_GROUP_COMMANDS,
                )
            },
            |engine, group, logged| engine.apply_submissions(group, logged),
            |engine, served, durable_at| {
                let committed = durable_at.unwrap_or_else(Instant::now) - served.started;
                observe(&GroupCommitted {
                    submissions: served.replies.len(),
                    commands: served.commands,
                    logged: served.logged,
                    applied: served.applied,
                    committed,
                    sharded: served.sharded,
                });
                for (reply, answered) in served.replies {
                    reply(engine.answers(answered)?);
                }
                Ok(true)
            },
        )?;
        self.finish()
    }

    fn apply_submissions(&mut self, group: Vec<Submission>, logged: &mut Vec<Logged>) -> Served {
        // Snapshot requests wait aside until this group is durable (`start_snapshots`).
        let group = self.snapshots.accept(group);
        let started = Instant::now();
        let mut sizes = Vec::with_capacity(group.len());
        let mut commands = std::mem::take(&mut self.group_commands);
        for submission in group {
            sizes.push((submission.reply, submission.commands.len()));
            // The commands move into the log's batch: no copy of each.
            commands.extend(submission.commands);
        }
        let count = commands.len();
        let sharded_before = self.shards.sharded_groups();
        let mut answers = self.apply_commands(&mut commands, logged).into_iter();
        self.group_commands = commands;
        let replies = sizes
            .into_iter()
            .map(|(reply, size)| (reply, answers.by_ref().take(size).collect()))
            .collect();
        Served {
            replies,
            started,
            applied: started.elapsed(),
            commands: count,
            logged: logged.len(),
            sharded: self.shards.sharded_groups() > sharded_before,
        }
    }

    /// Applies the commands of a group of lines; a line that could not be read is answered
    /// with its rejection, in its place.
    fn apply_parsed(&mut self, group: &mut Vec<Parsed>, logged: &mut Vec<Logged>) -> Vec<Answer> {
        let mut answers = Vec::with_capacity(group.len());
        let mut commands = std::mem::take(&mut self.group_commands);
        for parsed in group.drain(..) {
            match parsed {
                Ok(incoming) => {
                    commands.push(incoming);
                    answers.push(None);
                }
                Err(rejection) => answers.push(Some(Answer::Ready(Arc::from(rejection)))),
            }
        }
        let mut applied = self.apply_commands(&mut commands, logged).into_iter();
        self.group_commands = commands;
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| applied.next().expect("an answer each")))
            .collect()
    }

    /// Applies commands in order, emptying `commands`: on their merchants' shards when that
    /// can pay, else here, one after the other. Either way the state, the answers and the
    /// log are the same.
    fn apply_commands(
        &mut self,
        commands: &mut Vec<Incoming>,
        logged: &mut Vec<Logged>,
    ) -> Vec<Answer> {
        // Statements, snapshots' copy-on-touch and programs waiting for a first time all
        // need the whole ledger at each command: one after the other.
        let sharded = self.shards.worth_it(commands.iter().map(|c| &*c.command))
            && self.snapshots.is_idle()
            && self.pending_programs.is_empty()
            && !commands
                .iter()
                .any(|incoming| matches!(incoming.command.body, Body::Statement(_)));
        if !sharded {
            let mut answers = Vec::with_capacity(commands.len());
            let mut commands = commands.drain(..);
            loop {
                let rest = commands
                    .as_slice()
                    .iter()
                    .map(|incoming| &*incoming.command);
                self.ledger.warm_ahead(answers.len(), rest);
                let Some(incoming) = commands.next() else {
                    break;
                };
                answers.push(self.apply_command(incoming, logged));
            }
            return answers;
        }
        let items = commands
            .drain(..)
            .map(|incoming| {
                let now = self.time_for(incoming.command.at);
                Item { incoming, now }
            })
            .collect();
        let steps = self.shards.apply(&mut self.ledger, items);
        steps
            .into_iter()
            .map(|step| log_step(step, logged))
            .collect()
    }

    /// Applies groups while the committer makes the previous one durable: a group's answers
    /// are released only once its log write (and every one before it) is durable, in order.
    /// `next` gives the next group (waiting for one as `Wait` says); `release` hands a durable
    /// group's answers on, and says `false` when nobody is listening any more.
    fn pipeline<G, A>(
        &mut self,
        committer_priority: CommitterPriority,
        mut next: impl FnMut(Wait) -> Next<G>,
        mut apply: impl FnMut(&mut Engine, G, &mut Vec<Logged>) -> A,
        mut release: impl FnMut(&Engine, A, Option<Instant>) -> Result<bool, IngestError>,
    ) -> Result<(), IngestError> {
        self.committer = Some(Committer::start(Arc::clone(&self.log), committer_priority));
        let ran = self.pipeline_groups(&mut next, &mut apply, &mut release);
        // Stops the thread once the group it may be writing is done.
        self.committer = None;
        ran
    }

    fn pipeline_groups<G, A>(
        &mut self,
        next: &mut impl FnMut(Wait) -> Next<G>,
        apply: &mut impl FnMut(&mut Engine, G, &mut Vec<Logged>) -> A,
        release: &mut impl FnMut(&Engine, A, Option<Instant>) -> Result<bool, IngestError>,
    ) -> Result<(), IngestError> {
        let mut in_flight: Option<A> = None;
        // Whether the last idle pump moved rows: then look for commands without waiting.
        let mut streaming = false;
        loop {
            let wait = match (&in_flight, self.snapshots.is_idle(), streaming) {
                (Some(_), _, _) | (None, false, true) => Wait::No,
                (None, true, _) => Wait::Forever,
                (None, false, false) => Wait::UpTo(SNAPSHOT_IDLE_WAIT),
            };
            let group = match next(wait) {
                Next::Group(group) => group,
                Next::Nothing => {
                    let idle = in_flight.is_none();
                    if !self.release_in_flight(&mut in_flight, release)? {
                        return Ok(());
                    }
                    self.start_snapshots();
                    // Idle (nothing was in flight): snapshots stream at their readers' pace.
                    if idle {
                        streaming = self.snapshots.pump(&self.ledger, false);
                    }
                    continue;
                }
                Next::End => break,
            };
            if self.checkpoint_due() || self.snapshots.has_waiting() {
                // A checkpoint, and a snapshot's start, are of a state the log holds
                // entirely: nothing in flight.
                if !self.release_in_flight(&mut in_flight, release)? {
                    return Ok(());
                }
                if self.checkpoint_due() {
                    self.start_checkpoint();
                }
                self.start_snapshots();
            }
            let committer = self.committer.as_mut().expect("the pipeline is running");
            let mut job = committer.take_spare();
            let answers = apply(self, group, &mut job.records);
            if !self.release_in_flight(&mut in_flight, release)? {
                return Ok(());
            }
            self.submit(job);
            in_flight = Some(answers);
            // Between groups (while the committer writes): snapshots send their next rows.
            self.snapshots.pump(&self.ledger, true);
        }
        self.release_in_flight(&mut in_flight, release)?;
        // The engine is stopping: unfinished snapshots are dropped (run again by their readers).
        self.snapshots.abandon();
        Ok(())
    }

    /// Starts the snapshots waiting for their group to be durable, at the log's last batch.
    /// Only with nothing in flight, so the ledger is exactly the log.
    fn start_snapshots(&mut self) {
        if self.snapshots.has_waiting() {
            let position = self.last_batch();
            self.snapshots.start_waiting(&self.ledger, position);
        }
    }

    /// Hands a group's log write to the committer: `job` holds the group's records and the
    /// buffers of an earlier group (its entries still in one), which the ledger takes in
    /// exchange for the entries and evicted results this group left.
    fn submit(&mut self, mut job: Job) {
        self.checkpoints.commands_since += job.records.len() as u64;
        job.entries = self.ledger.swap_entries(std::mem::take(&mut job.entries));
        job.evicted = self.ledger.swap_evicted(std::mem::take(&mut job.evicted));
        let committer = self.committer.as_mut().expect("the pipeline is running");
        committer.submit(job);
    }

    /// If a group is in flight: waits for the group in the committer's hands, then releases
    /// its answers (applied before the next group was handed over, so durable now), and
    /// collects a checkpoint that is done. False: stop (`release` says the output is gone).
    fn release_in_flight<A>(
        &mut self,
        in_flight: &mut Option<A>,
        release: &mut impl FnMut(&Engine, A, Option<Instant>) -> Result<bool, IngestError>,
    ) -> Result<bool, IngestError> {
        let Some(answers) = in_flight.take() else {
            return Ok(true);
        };
        let durable_at = self.wait_for_commit()?;
        // Nothing is being written now: compaction does not wait for the committer.
        self.collect_checkpoint(false)?;
        release(self, answers, durable_at)
    }

    /// Waits for the group in the committer's hands to be durable. Meanwhile the engine
    /// thread has nothing to do: streaming snapshots send the chunks that fall due.
    fn wait_for_commit(&mut self) -> Result<Option<Instant>, IngestError> {
        loop {
            let committer = self.committer.as_mut().expect("the pipeline is running");
            if !self.snapshots.is_streaming() {
                return Ok(committer.wait()?);
            }
            if let Some(durable) = committer.wait_for(COMMIT_POLL_WHILE_STREAMING) {
                return Ok(durable?);
            }
            self.snapshots.pump(&self.ledger, true);
        }
    }

    /// Answers of a durable group.
    fn answers(&self, answered: Vec<Answer>) -> Result<Vec<Arc<CommandResult>>, IngestError> {
        answered
            .into_iter()
            .map(|answer| self.answer(answer))
            .collect()
    }

    fn answer(&self, answer: Answer) -> Result<Arc<CommandResult>, IngestError> {
        Ok(match answer {
            Answer::Ready(result) => result,
            // Read once the group is durable: the page shows every command before it.
            Answer::Statement(query) => Arc::new(self.statement(&query.0, &query.1)?),
        })
    }

    /// Logs a group with the entries its commands wrote, in one durable transaction.
    fn append(&mut self, logged: &[Logged]) -> Result<(), IngestError> {
        assert!(
            self.committer.is_none(),
            "the pipeline appends through its committer"
        );
        let entries = self.ledger.take_entries();
        // No committer runs: evicted results are freed here.
        drop(self.ledger.take_evicted());
        self.log.append(logged, &entries)?;
        self.checkpoints.commands_since += logged.len() as u64;
        Ok(())
    }

    fn apply_command(&mut self, incoming: Incoming, logged: &mut Vec<Logged>) -> Answer {
        let command = &incoming.command;
        if let Body::Statement(_) = command.body {
            return match self.ledger.statement_plan(command) {
                Ok(plan) => Answer::Statement(Box::new((*incoming.command, plan))),
                Err(rejection) => Answer::Ready(Arc::new(CommandResult::rejected(
                    &command.merchant,
                    command.key.text(),
                    CommandKind::Statement,
                    rejection.reason,
                    rejection.message,
                ))),
            };
        }
        let now = self.time_for(command.at);
        if !self.pending_programs.is_empty() {
            self.install_pending(now, logged)
                .expect("programs were checked when given");
        }
        let entries_before = self.ledger.entries().len();
        if !self.snapshots.is_idle() {
            self.capture_for_snapshots(command, now);
        }
        let step = shards::step(&mut self.ledger, Item { incoming, now });
        if !self.snapshots.is_idle() {
            let written = &self.ledger.entries()[entries_before..];
            self.snapshots.after(&self.ledger, written);
            // Between commands too: a group under load is far longer than a chunk's interval.
            self.snapshots.pump(&self.ledger, true);
        }
        log_step(step, logged)
    }

    /// Captures the snapshot rows the command, and the tick due before it, may change.
    fn capture_for_snapshots(&mut self, command: &Command, now: Timestamp) {
        let due = self.ledger.due_at(&command.merchant);
        let tick = due
            .is_some_and(|due| due <= now)
            .then(|| tick_command(&command.merchant, now));
        self.snapshots.before(&self.ledger, tick.as_ref(), command);
    }

    /// Answers a statement query from the log's entries.
    fn statement(
        &self,
        command: &Command,
        plan: &StatementPlan,
    ) -> Result<CommandResult, IngestError> {
        let Body::Statement(query) = &command.body else {
            unreachable!("planned from a statement query")
        };
        let entries = self.log.entries(&plan.seqs)?;
        let page = StatementPage {
            page: query.page,
            per_page: query.per_page,
            total_entries: plan.total_entries,
            entries: entries
                .into_iter()
                .map(|entry| statement_entry(entry, plan.minor_units))
                .collect(),
        };
        let applied = Applied {
            program_version: plan.program_version,
            member: Some(MemberView {
                id: plan.member,
                enrolled: false,
            }),
            statement: Some(page),
            ..Applied::default()
        };
        Ok(CommandResult {
            merchant: command.merchant.clone(),
            key: command.key.text(),
            command: CommandKind::Statement,
            status: Status::Applied(Box::new(applied)),
        })
    }

    fn tick_if_due(&mut self, merchant: &str, now: Timestamp, logged: &mut Vec<Logged>) {
        if let Some((tick, _)) = tick_if_due(&mut self.ledger, merchant, now) {
            logged.push(Logged::new(now, tick));
        }
    }

    /// At the end of input: time-driven work of every merchant up to the clock, logged, and
    /// a checkpoint of everything so the next start is quick.
    fn finish(&mut self) -> Result<(), IngestError> {
        let Some(now) = self.now else { return Ok(()) };
        let names: Vec<String> = self
            .ledger
            .merchants()
            .map(|m| m.name.to_string())
            .collect();
        let mut logged = Vec::new();
        for name in names {
            self.tick_if_due(&name, now, &mut logged);
        }
        self.append(&logged)?;
        self.ledger.verify();
        self.checkpoint_now()
    }

    /// Whether enough commands were logged since the last checkpoint to start another (and
    /// none is being written).
    fn checkpoint_due(&self) -> bool {
        let every = self.checkpoints.every_commands;
        every > 0
            && self.checkpoints.commands_since >= every
            && self.checkpoints.in_flight.is_none()
    }

    /// Takes a checkpoint of the state as it is now (unless checkpoints are off) and waits
    /// until it is durable.
    pub fn checkpoint_now(&mut self) -> Result<(), IngestError> {
        self.collect_checkpoint(true)?;
        if self.checkpoints.every_commands > 0 && self.checkpoints.commands_since > 0 {
            self.start_checkpoint();
            self.collect_checkpoint(true)?;
        }
        Ok(())
    }

    /// Serialises the state here, between groups (the only pause), and writes it on a
    /// thread of its own.
    fn start_checkpoint(&mut self) {
        let Some(last_batch) = self.log.batches().checked_sub(1) else {
            return;
        };
        let started = Instant::now();
        let buffers = std::mem::take(&mut self.checkpoints.buffers);
        let encoded = checkpoint::encode(&self.ledger, last_batch, self.now, buffers);
        tracing::info!(
            batch = last_batch,
            mb = encoded.file_bytes() >> 20,
            engine_waited_ms = started.elapsed().as_millis() as u64,
            "checkpoint serialised; writing it"
        );
        let (dir, keep) = (self.checkpoints.dir.clone(), self.checkpoints.keep);
        let (answer, in_flight) = sync_channel(1);
        std::thread::spawn(move || {
            let written = checkpoint::write_keeping(&dir, &encoded, keep);
            // The engine may have stopped; then nobody waits for the answer.
            let _ = answer.send((written, encoded.into_buffers()));
        });
        self.checkpoints.in_flight = Some(in_flight);
        self.checkpoints.commands_since = 0;
    }

    /// Takes the answer of a checkpoint being written, waiting for it or not. A durable
    /// checkpoint lets the log drop the batches before its last one. A failed one loses
    /// nothing (the log still has every batch) and is retried at the next occasion.
    fn collect_checkpoint(&mut self, wait: bool) -> Result<(), IngestError> {
        let Some(in_flight) = &self.checkpoints.in_flight else {
            return Ok(());
        };
        let answer = match wait {
            true => in_flight.recv().ok(),
            false => match in_flight.try_recv() {
                Ok(answer) => Some(answer),
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => None,
            },
        };
        self.checkpoints.in_flight = None;
        let answer = answer.map(|(written, buffers)| {
            self.checkpoints.buffers = buffers;
            written
        });
        match answer {
            Some(Ok(compactable)) => Ok(self.log.compact_before(compactable)?),
            Some(Err(error)) if wait => Err(error.into()),
            Some(Err(error)) => {
                self.checkpoints.failed.push(error.to_string());
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// The key of the engine's install of a program given on the command line: readable, and
/// within the 128 characters every `txn` is held to (a merchant's name may take 128 alone).
fn program_txn(merchant: &str, version: u32) -> String {
    let txn = format!("program-{merchant}-v{version}");
    if txn.len() <= 128 {
        return txn;
    }
    format!(
        "program-{:032x}-v{version}",
        xxhash_rust::xxh3::xxh3_128(merchant.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::{kept_line, program_txn, KEPT_LINE_MAX_BYTES};

    #[test]
    fn a_program_install_key_fits_whatever_the_merchant_name() {
        assert_eq!(program_txn("demo", 3), "program-demo-v3");
        let long = "m".repeat(128);
        let txn = program_txn(&long, u32::MAX);
        assert!(txn.len() <= 128, "{txn}");
        assert_ne!(txn, program_txn(&"n".repeat(128), u32::MAX));
    }

    #[test]
    fn a_line_is_kept_for_the_log_trimmed_unless_it_is_long() {
        assert_eq!(kept_line("{}".into()).as_deref(), Some("{}"));
        assert_eq!(kept_line("  {} \t".into()).as_deref(), Some("{}"));
        let long = format!("{{{}}}", " ".repeat(KEPT_LINE_MAX_BYTES));
        assert_eq!(kept_line(long), None);
    }
}
