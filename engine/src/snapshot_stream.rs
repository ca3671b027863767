//! Snapshots of a running engine, streamed to an operator while commands go on applying.
//!
//! A snapshot request waits until the group it came in is durable and nothing after it is
//! applied; then its cursor starts (`core::SnapshotCursor`) at that log position. Between
//! commands and groups, and while the engine is idle, each snapshot hands its next chunk of
//! rows to its connection if the connection has room (never waiting for it); before a
//! command changes a member no chunk has shown yet, that member's row is captured as it is
//! still. So the rows are the state at one position, the engine pauses for one chunk at a
//! time, and a slow reader only holds its own rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_protocol::{
    Body, Command, CommandKind, CommandResult, Origin, Reason, SnapshotRows, Status,
};

use crate::core::{Entry, Ledger, SnapshotCursor};
use crate::ingest::Submission;

/// Rows per chunk: the engine's longest pause for a snapshot, and a `rows` frame's size
/// (about 100 bytes a row).
pub const ROWS_PER_CHUNK: usize = 8192;
/// While commands wait, snapshots take at most this share of the engine thread's time (so
/// ingestion keeps the rest); an idle engine streams as fast as the readers read.
pub const ENGINE_TIME_SHARE_PERCENT: u32 = 20;
/// The longest the engine hands rows over between two groups.
pub const MAX_PAUSE: Duration = Duration::from_millis(50);
/// While commands wait, a snapshot gets a chunk at most this often (about 1.4 million rows a
/// second), between commands as well as between groups. Its reader's work (framing, a
/// Parquet writer, often on the same machine) then takes a steady part of the cores instead
/// of bursts of a whole one: 10,000,000 members in about 7.5 s, ingestion going on at about
/// 80% (`docs/performance.md`).
pub const CHUNK_INTERVAL_UNDER_LOAD: Duration = Duration::from_millis(6);
/// Chunks a snapshot may catch up at once under load, after a long group.
const CHUNKS_CAUGHT_UP_MAX: u32 = 16;
/// Snapshots streaming at once; more wait for one to finish.
pub const MAX_STREAMS: usize = 4;

/// What a connection did with a chunk offered to it.
pub enum Offer {
    Taken,
    /// No room now: offered again later.
    Full(SnapshotRows),
    /// The reader went away: the snapshot stops.
    Closed,
}

/// Where a snapshot's rows go (the connection's task). `offer` must not block.
pub trait RowSink: Send {
    fn offer(&mut self, rows: SnapshotRows) -> Offer;
}

/// A snapshot being streamed.
struct Stream {
    command: Command,
    cursor: SnapshotCursor,
    log_position: Option<u64>,
    last_entry_seq: u64,
    rows_sent: u64,
    /// A chunk the connection had no room for.
    unsent: Option<SnapshotRows>,
    /// Under load, its next chunk goes no earlier than this.
    next_chunk_at: Instant,
    sink: Box<dyn RowSink>,
    reply: Box<dyn FnOnce(Vec<Arc<CommandResult>>) + Send>,
    /// A change the cursor did not foresee: the rows can no longer be trusted.
    broken: bool,
}

/// Every snapshot of the engine: waiting for their group to be durable, or streaming.
pub struct Streams {
    waiting: Vec<(Submission, Box<dyn RowSink>)>,
    active: Vec<Stream>,
    rows_per_chunk: usize,
    /// Since when snapshots have been streaming, and the engine time they took meanwhile
    /// (pacing only: nothing the ledger sees depends on a clock).
    streaming_since: Option<Instant>,
    busy: Duration,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            waiting: Vec::new(),
            active: Vec::new(),
            rows_per_chunk: ROWS_PER_CHUNK,
            streaming_since: None,
            busy: Duration::ZERO,
        }
    }
}

impl Streams {
    pub fn set_rows_per_chunk(&mut self, rows: usize) {
        assert!(rows > 0, "a chunk holds at least one row");
        self.rows_per_chunk = rows;
    }

    /// Some snapshot has started and is sending rows.
    pub fn is_streaming(&self) -> bool {
        !self.active.is_empty()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.active.is_empty()
    }

    /// Takes the snapshot requests out of a group: they start once the group is durable.
    pub fn accept(&mut self, group: Vec<Submission>) -> Vec<Submission> {
        let mut rest = Vec::with_capacity(group.len());
        for mut submission in group {
            match submission.rows.take() {
                Some(sink) => self.waiting.push((submission, sink)),
                None => rest.push(submission),
            }
        }
        rest
    }

    /// Captures the rows `command` (and the engine's `tick` before it, if any) may change.
    pub fn before(&mut self, ledger: &Ledger, tick: Option<&Command>, command: &Command) {
        for stream in &mut self.active {
            if let Some(tick) = tick {
                ledger.capture_before(&mut stream.cursor, tick);
            }
            ledger.capture_before(&mut stream.cursor, command);
        }
    }

    /// Checks that the entries a command wrote changed only members already captured.
    pub fn after(&mut self, ledger: &Ledger, entries: &[Entry]) {
        for stream in &mut self.active {
            if !stream.broken && ledger.snapshot_missed(&stream.cursor, entries) {
                tracing::error!(
                    key = %stream.command.key,
                    "a snapshot missed a change; it is refused and can be run again"
                );
                stream.broken = true;
            }
        }
    }

    /// Whether a snapshot request waits for its start and one more may stream now.
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty() && self.active.len() < MAX_STREAMS
    }

    /// Starts the waiting snapshots (as many as may stream at once) at this log position. The
    /// ledger must hold exactly the log up to it: nothing applied and not yet durable.
    pub fn start_waiting(&mut self, ledger: &Ledger, log_position: Option<u64>) {
        while self.active.len() < MAX_STREAMS && !self.waiting.is_empty() {
            let (submission, sink) = self.waiting.remove(0);
            self.start(ledger, submission, sink, log_position);
        }
    }

    /// Between commands or groups: offers each started snapshot chunks while its reader has
    /// room (under load, those due by `CHUNK_INTERVAL_UNDER_LOAD`, within the snapshots'
    /// share of the engine's time), and answers the finished ones. Returns whether any rows
    /// moved. Rows not shown yet are as they were at the snapshot's start (a command captures
    /// them before changing them), so this may run while the ledger is ahead of the log.
    pub fn pump(&mut self, ledger: &Ledger, under_load: bool) -> bool {
        if self.active.is_empty() {
            return false;
        }
        let started = Instant::now();
        let since = *self.streaming_since.get_or_insert(started);
        let allowance = match under_load {
            true => (since.elapsed() * ENGINE_TIME_SHARE_PERCENT / 100).saturating_sub(self.busy),
            false => MAX_PAUSE,
        }
        .min(MAX_PAUSE);
        // Under load with the share used up: nothing until the share grows again.
        let moved = (!under_load || !allowance.is_zero())
            && self.pump_within(ledger, started, allowance, under_load);
        self.busy += started.elapsed();
        if self.active.is_empty() {
            (self.streaming_since, self.busy) = (None, Duration::ZERO);
        }
        moved
    }

    fn pump_within(
        &mut self,
        ledger: &Ledger,
        started: Instant,
        allowance: Duration,
        under_load: bool,
    ) -> bool {
        let mut moved = false;
        let mut index = 0;
        while index < self.active.len() {
            let stream = &mut self.active[index];
            // Chunks until the reader is full, the time is used or (under load) none is due.
            let mut step = Step::NotDue;
            while !under_load || stream.next_chunk_at <= started {
                step = stream.step(ledger, self.rows_per_chunk);
                if !matches!(step, Step::Sent) {
                    break;
                }
                moved = true;
                if under_load {
                    stream.paced(started);
                }
                if started.elapsed() >= allowance {
                    break;
                }
            }
            match step {
                Step::Sent => moved = true,
                Step::Waiting | Step::NotDue => {}
                Step::Closed => {
                    drop(self.active.swap_remove(index));
                    continue;
                }
                Step::Done => {
                    let stream = self.active.swap_remove(index);
                    stream.finish();
                    moved = true;
                    continue;
                }
            }
            index += 1;
        }
        moved
    }

    fn start(
        &mut self,
        ledger: &Ledger,
        submission: Submission,
        sink: Box<dyn RowSink>,
        log_position: Option<u64>,
    ) {
        let Submission {
            mut commands,
            reply,
            ..
        } = submission;
        let refuse = |command: &Command, reason: Reason, message: &str| {
            vec![Arc::new(CommandResult::rejected(
                &command.merchant,
                command.key.text(),
                CommandKind::Snapshot,
                reason,
                message.to_string(),
            ))]
        };
        let command = *commands
            .pop()
            .expect("a snapshot request has one command")
            .command;
        assert!(commands.is_empty(), "a snapshot request is alone");
        let Body::Snapshot(query) = &command.body else {
            unreachable!("only snapshot requests carry a row sink")
        };
        if matches!(command.origin, Origin::Terminal(_)) {
            return reply(refuse(
                &command,
                Reason::Unauthorized,
                "a snapshot needs an operator (admin) identity",
            ));
        }
        let merchant = (!query.every_merchant).then_some(command.merchant.as_str());
        if merchant.is_some_and(|name| ledger.merchant(name).is_none()) {
            let message = format!("merchant {:?} has no loyalty program", command.merchant);
            return reply(refuse(&command, Reason::UnknownMerchant, &message));
        }
        let cursor = ledger.snapshot_cursor(merchant);
        self.active.push(Stream {
            command,
            cursor,
            log_position,
            last_entry_seq: ledger.last_entry_seq(),
            rows_sent: 0,
            unsent: None,
            next_chunk_at: Instant::now(),
            sink,
            reply,
            broken: false,
        });
    }

    /// The engine is stopping: snapshots not finished are dropped (their readers see the
    /// stream end without a result and run them again).
    pub fn abandon(&mut self) {
        self.waiting.clear();
        self.active.clear();
    }
}

enum Step {
    Sent,
    Waiting,
    /// Under load, not yet time for another chunk.
    NotDue,
    Closed,
    Done,
}

impl Stream {
    /// A chunk went under load: the next is due an interval later (a few may catch up).
    fn paced(&mut self, now: Instant) {
        let earliest = now
            .checked_sub(CHUNK_INTERVAL_UNDER_LOAD * CHUNKS_CAUGHT_UP_MAX)
            .unwrap_or(now);
        self.next_chunk_at = self.next_chunk_at.max(earliest) + CHUNK_INTERVAL_UNDER_LOAD;
    }

    fn step(&mut self, ledger: &Ledger, rows_per_chunk: usize) -> Step {
        if self.broken {
            return Step::Done;
        }
        let chunk = match self.unsent.take() {
            Some(chunk) => chunk,
            None => self.next_chunk(ledger, rows_per_chunk),
        };
        let last = chunk.last;
        match self.sink.offer(chunk) {
            Offer::Taken if last => Step::Done,
            Offer::Taken => Step::Sent,
            Offer::Full(chunk) => {
                self.unsent = Some(chunk);
                Step::Waiting
            }
            Offer::Closed => Step::Closed,
        }
    }

    fn next_chunk(&mut self, ledger: &Ledger, rows_per_chunk: usize) -> SnapshotRows {
        let rows = ledger.snapshot_next(&mut self.cursor, rows_per_chunk);
        self.rows_sent += rows.len() as u64;
        SnapshotRows {
            log_position: self.log_position,
            last_entry_seq: self.last_entry_seq,
            rows,
            last: self.cursor.is_done(),
            rows_sent: self.rows_sent,
        }
    }

    fn finish(self) {
        let status = match self.broken {
            false => Status::Applied(Box::default()),
            true => Status::Rejected {
                reason: Reason::Overloaded,
                message: "The snapshot could not be kept consistent with the commands applied \
                          meanwhile; run it again."
                    .into(),
            },
        };
        let result = CommandResult {
            merchant: self.command.merchant.clone(),
            key: self.command.key.text(),
            command: CommandKind::Snapshot,
            status,
        };
        (self.reply)(vec![Arc::new(result)]);
    }
}
