//! The write-ahead log: the only module that knows redb.
//!
//! The log is a sequence of batches. A batch is one redb value holding many commands, each
//! with the engine time it was applied at, written in one durable transaction: one fsync for
//! the whole group, and large sequential values instead of a row per order. The format is in
//! `docs/storage.md`.

use std::path::Path;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::backends::FileBackend;
use redb::{Builder, Database, Durability, ReadableTable, StorageBackend, TableDefinition};
use serde::{Deserialize, Serialize};
use tally_protocol::wire::{self, AlignedVec};
use tally_protocol::{parse_command_line, Command, EntryKind, Wallet};

use crate::core::Entry;

use crate::Timestamp;

const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");
/// The ledger entries each batch wrote, keyed by the first entry's number. Never compacted:
/// they are the members' statements.
const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const ENTRIES_MAGIC: [u8; 4] = *b"TLYE";
const MAGIC: [u8; 4] = *b"TLY1";
/// The batch format written: version 2 keeps commands that came over the wire (or from the
/// engine) as rkyv archives instead of JSON. Version 1 batches are still read.
const BATCH_FORMAT_VERSION: u16 = 2;
/// The entries record format written: version 2 writes what a command's entries share once.
/// Version 1 records are still read.
const ENTRIES_FORMAT_VERSION: u16 = 2;
/// How a command is kept in a version 2 batch.
const FORM_JSON: u8 = 0;
const FORM_ARCHIVE: u8 = 1;
const HEADER_BYTES: usize = 4 + 2 + 4;
const CHECKSUM_BYTES: usize = 8;
/// A batch never exceeds this, unless it holds a single command that does: a group whose
/// commands need more is written as several batches, in one transaction. (Small in unit
/// tests, so that their groups are split.)
pub const MAX_BATCH_BYTES: usize = if cfg!(test) { 16 << 10 } else { 64 << 20 };
/// redb's page. A value is kept in a leaf of a power of two pages, the rest of it padding that
/// is zeroed, checksummed and written like the value.
const REDB_PAGE_BYTES: usize = 4096;
/// What a leaf adds to its one value (redb 2: a 4-byte header, the value's end, the u64
/// key), with room to spare.
const LEAF_OVERHEAD_BYTES: usize = 64;
/// A group's batch or entries left over after the values that fill whole leaves go in one
/// value up to this size: the padding of the last leaf is at most about half of it.
const LAST_VALUE_MAX_BYTES: usize = 128 << 10;

/// A log position as people read it: `log batch 12`, or `an empty log`.
pub fn position_text(position: Option<u64>) -> String {
    position.map_or("an empty log".into(), |p| format!("log batch {p}"))
}

/// One logged command and the engine time it was applied at.
#[derive(Debug, Clone)]
pub struct Logged {
    pub now: Timestamp,
    pub command: Box<Command>,
    /// The command's JSON as it came in (a `tally ingest` line, which parsed to `command`):
    /// written to the log as it is rather than encoded again. `None`: encoded from `command`.
    pub json: Option<String>,
}

impl Logged {
    pub fn new(now: Timestamp, command: impl Into<Box<Command>>) -> Logged {
        Logged {
            now,
            command: command.into(),
            json: None,
        }
    }
}

/// The same command at the same time: how its JSON was spelled does not matter.
impl PartialEq for Logged {
    fn eq(&self, other: &Logged) -> bool {
        self.now == other.now && self.command == other.command
    }
}

impl Eq for Logged {}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing the log failed; nothing after the last durable batch is kept.
    #[error("the log at {path} failed: {message}")]
    Storage { path: String, message: String },
    /// A batch does not read back as written: the engine refuses to guess.
    #[error("the log is corrupt at batch {batch}: {what}")]
    Corrupt { batch: u64, what: String },
}

/// The log is shared between the engine thread (statements, compaction) and the committer
/// thread that appends; redb lets reads run beside the one write transaction, and appends
/// are serialised by `appending`.
pub struct CommandLog {
    db: Database,
    path: String,
    /// The number the next appended batch gets.
    next_batch: AtomicU64,
    appending: Mutex<Scratch>,
}

/// Where appends encode a batch and its entries: kept between appends, since a fresh
/// buffer of a few megabytes each group was grown by copying into new pages each time.
#[derive(Default)]
struct Scratch {
    /// One value at a time: a batch or an entries record.
    value: Vec<u8>,
    /// Every record's (or run of entries') encoding, one after another, and where each ends.
    items: Vec<u8>,
    ends: Vec<usize>,
    /// The number of each run's first entry.
    first_seqs: Vec<u64>,
    /// One command's archive at a time.
    archive: AlignedVec,
}

/// Room a scratch buffer keeps between appends: a group's batch is a few megabytes.
const SCRATCH_KEPT_BYTES: usize = 16 << 20;
/// Memory redb keeps for the log's pages (a tenth of it for pages being written). The log is
/// written once and read back rarely (statements, recovery, both helped by the system's own
/// cache): with redb's default, 1 GiB, every page written stayed in fresh memory until that
/// was full, and the kernel zeroing it was a third of the committer's time. At 64 MiB it
/// still was a large part of it under `tally serve`'s smaller groups; at 8 MiB the pages
/// written go back to the allocator soon enough to be taken again warm (`tally serve` under
/// the load generator: 68,000 and 80,000 durable commands/s at 64 MiB, 88,000 twice at 8).
const CACHE_BYTES: usize = 8 << 20;

impl Scratch {
    /// Empties the buffers, keeping their room up to `SCRATCH_KEPT_BYTES`.
    fn empty(&mut self) {
        let Scratch {
            value,
            items,
            ends,
            first_seqs,
            archive: _,
        } = self;
        *value = crate::emptied(std::mem::take(value), SCRATCH_KEPT_BYTES);
        *items = crate::emptied(std::mem::take(items), SCRATCH_KEPT_BYTES);
        ends.clear();
        first_seqs.clear();
    }
}

/// Creates an empty log at `path` whole or not at all. redb writes a new file's header and
/// regions in several steps: a process killed between them left a file it refused ever after
/// ("invalid data"), so that a kill in the first milliseconds of a new engine's life lost it
/// its data directory. The log is made beside its place, closed and renamed into it; what a
/// kill leaves beside it is never a log and is removed by the next start.
fn create(path: &Path) -> Result<(), LogError> {
    let unfinished = path.with_extension("redb.new");
    create_empty(&unfinished).map_err(|e| storage_error(&unfinished, &*e))?;
    std::fs::rename(&unfinished, path).map_err(|e| storage_error(path, &e))?;
    // The rename is durable only once the directory is.
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))
        .and_then(|dir| dir.sync_all())
        .map_err(|e| storage_error(path, &e))
}

/// A new log with its tables, durable and closed, at `path` (whatever was there is removed).
fn create_empty(path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let db = Builder::new().create(path)?;
    let write = db.begin_write()?;
    write.open_table(BATCHES)?;
    write.open_table(ENTRIES)?;
    write.commit()?;
    Ok(())
}

impl CommandLog {
    /// Opens the log file, creating it first if there is none.
    pub fn open(path: &Path) -> Result<CommandLog, LogError> {
        if !path.exists() {
            create(path)?;
        }
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| storage_error(path, &e))?;
        CommandLog::start(db, path)
    }

    /// Opens the log on a disk that fails on cue (see `Faults`): tests of the fail-stop path.
    pub fn open_faulty(path: &Path, faults: Faults) -> Result<CommandLog, LogError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| storage_error(path, &e))?;
        let file = FileBackend::new(file).map_err(|e| storage_error(path, &e))?;
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(FaultyDisk { file, faults })
            .map_err(|e| storage_error(path, &e))?;
        CommandLog::start(db, path)
    }

    fn start(db: Database, path: &Path) -> Result<CommandLog, LogError> {
        let storage = |error: &dyn std::fmt::Display| storage_error(path, error);
        let log = CommandLog {
            db,
            path: path.display().to_string(),
            next_batch: AtomicU64::new(0),
            appending: Mutex::new(Scratch::default()),
        };
        let write = log.db.begin_write().map_err(|e| storage(&e))?;
        write.open_table(BATCHES).map_err(|e| storage(&e))?;
        write.open_table(ENTRIES).map_err(|e| storage(&e))?;
        write.commit().map_err(|e| storage(&e))?;
        let next = log.last_batch()?.map_or(0, |last| last + 1);
        log.next_batch.store(next, Ordering::Release);
        Ok(log)
    }

    fn storage(&self, error: impl std::fmt::Display) -> LogError {
        LogError::Storage {
            path: self.path.clone(),
            message: error.to_string(),
        }
    }

    fn last_batch(&self) -> Result<Option<u64>, LogError> {
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = read.open_table(BATCHES).map_err(|e| self.storage(e))?;
        let last = table.last().map_err(|e| self.storage(e))?;
        Ok(last.map(|(key, _)| key.value()))
    }

    /// Batches appended so far (durable ones: the count moves after the commit).
    pub fn batches(&self) -> u64 {
        self.next_batch.load(Ordering::Acquire)
    }

    /// Reads every batch in order and hands its commands to `visit`.
    pub fn replay(&self, visit: impl FnMut(Logged)) -> Result<u64, LogError> {
        self.replay_after(None, visit)
    }

    /// Reads, in order, every batch after `last_applied` (a checkpoint's last batch; `None`:
    /// all of them) and hands its commands to `visit`. Returns how many batches it read.
    /// Batches at or before `last_applied` that compaction has not removed yet are skipped;
    /// a gap anywhere after it is corruption.
    pub fn replay_after(
        &self,
        last_applied: Option<u64>,
        mut visit: impl FnMut(Logged),
    ) -> Result<u64, LogError> {
        self.replay_batches_after(last_applied, |_, logged| visit(logged))
    }

    /// `replay_after`, telling `visit` each command's batch number too.
    pub fn replay_batches_after(
        &self,
        last_applied: Option<u64>,
        mut visit: impl FnMut(u64, Logged),
    ) -> Result<u64, LogError> {
        let first = last_applied.map_or(0, |last| last + 1);
        let next_batch = self.batches();
        if first > next_batch {
            return Err(LogError::Corrupt {
                batch: next_batch,
                what: format!(
                    "the checkpoint covers batches up to {}, but the log ends before {next_batch}",
                    first - 1,
                ),
            });
        }
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = read.open_table(BATCHES).map_err(|e| self.storage(e))?;
        let mut expected = first;
        for item in table.range(first..).map_err(|e| self.storage(e))? {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            let batch = key.value();
            if batch != expected {
                return Err(LogError::Corrupt {
                    batch,
                    what: format!("batch {expected} is missing"),
                });
            }
            for logged in decode(batch, value.value())? {
                visit(batch, logged);
            }
            expected += 1;
        }
        Ok(expected - first)
    }

    /// Removes the batches before `batch` (a durable checkpoint holds their effects). The
    /// batch itself stays, so the log never runs behind the checkpoint.
    pub fn compact_before(&self, batch: u64) -> Result<(), LogError> {
        let mut write = self.db.begin_write().map_err(|e| self.storage(e))?;
        write.set_durability(Durability::Immediate);
        {
            let mut table = write.open_table(BATCHES).map_err(|e| self.storage(e))?;
            table
                .retain_in(..batch, |_, _| false)
                .map_err(|e| self.storage(e))?;
        }
        write.commit().map_err(|e| self.storage(e))
    }

    /// The number of the first batch still in the log, if any.
    pub fn first_batch(&self) -> Result<Option<u64>, LogError> {
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = read.open_table(BATCHES).map_err(|e| self.storage(e))?;
        let first = table.first().map_err(|e| self.storage(e))?;
        Ok(first.map(|(key, _)| key.value()))
    }

    /// Appends a group's commands durably, as batches in one transaction (`cut_into_values`
    /// says how many): when this returns `Ok`, all of them survive a crash. An error means
    /// they may or may not be on disk; the caller must stop acknowledging.
    pub fn append(&self, records: &[Logged], entries: &[Entry]) -> Result<(), LogError> {
        if records.is_empty() {
            assert!(entries.is_empty(), "entries come from logged commands");
            return Ok(());
        }
        let mut scratch = self.appending.lock().expect("an append does not panic");
        let Scratch {
            value,
            items,
            ends,
            first_seqs,
            archive,
        } = &mut *scratch;
        let mut write = self.db.begin_write().map_err(|e| self.storage(e))?;
        write.set_durability(Durability::Immediate);
        let mut batch = self.batches();
        {
            let mut table = write.open_table(BATCHES).map_err(|e| self.storage(e))?;
            encode_records(records, items, ends, archive);
            let framing = HEADER_BYTES + CHECKSUM_BYTES;
            for (taken, bytes) in cut_into_values(items, ends, framing, MAX_BATCH_BYTES) {
                batch_into(taken.len(), bytes, value);
                // Pair assertion: what is written must read back as the same commands.
                debug_assert_eq!(
                    decode(batch, value).expect("an encoded batch decodes"),
                    records[taken]
                );
                table
                    .insert(batch, value.as_slice())
                    .map_err(|e| self.storage(e))?;
                batch += 1;
            }
            if !entries.is_empty() {
                let mut table = write.open_table(ENTRIES).map_err(|e| self.storage(e))?;
                encode_entries(entries, items, ends, first_seqs);
                let framing = ENTRIES_FRAMING_MAX_BYTES;
                for (taken, bytes) in cut_into_values(items, ends, framing, MAX_BATCH_BYTES) {
                    entries_record_into(taken.len(), bytes, value);
                    table
                        .insert(first_seqs[taken.start], value.as_slice())
                        .map_err(|e| self.storage(e))?;
                }
            }
        }
        write.commit().map_err(|e| self.storage(e))?;
        self.next_batch.store(batch, Ordering::Release);
        scratch.empty();
        Ok(())
    }
}

impl CommandLog {
    /// Every logged entry, in the order written (reports read the whole history).
    pub fn scan_entries(&self, mut visit: impl FnMut(&LoggedEntry)) -> Result<(), LogError> {
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = read.open_table(ENTRIES).map_err(|e| self.storage(e))?;
        for item in table.iter().map_err(|e| self.storage(e))? {
            let (key, value) = item.map_err(|e| self.storage(e))?;
            for entry in decode_entries(key.value(), value.value())? {
                visit(&entry);
            }
        }
        Ok(())
    }

    /// The entries with these numbers, in the order asked. Every number must have been
    /// logged: a missing one is corruption.
    pub fn entries(&self, seqs: &[u64]) -> Result<Vec<LoggedEntry>, LogError> {
        let read = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = read.open_table(ENTRIES).map_err(|e| self.storage(e))?;
        let mut found = Vec::with_capacity(seqs.len());
        let mut group: Vec<LoggedEntry> = Vec::new();
        for &seq in seqs {
            let cached = group.first().is_some_and(|e| e.seq <= seq)
                && group.last().is_some_and(|e| e.seq >= seq);
            if !cached {
                let missing = || LogError::Corrupt {
                    batch: seq,
                    what: format!("entry {seq} is not in the log"),
                };
                let mut range = table.range(..=seq).map_err(|e| self.storage(e))?;
                let (key, value) = range
                    .next_back()
                    .ok_or_else(missing)?
                    .map_err(|e| self.storage(e))?;
                group = decode_entries(key.value(), value.value())?;
            }
            let at =
                group
                    .binary_search_by_key(&seq, |e| e.seq)
                    .map_err(|_| LogError::Corrupt {
                        batch: seq,
                        what: format!("entry {seq} is not in the log"),
                    })?;
            found.push(group[at].clone());
        }
        Ok(found)
    }
}

/// A ledger entry as the log keeps it. Amounts are points or credit in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEntry {
    pub seq: u64,
    pub merchant: String,
    pub member: u64,
    pub wallet: Wallet,
    pub kind: EntryKind,
    pub amount: i64,
    pub at_micros: i64,
    pub command: String,
    pub rule: Option<String>,
    pub program_version: u32,
    pub lots: Vec<(u32, i64)>,
}

/// A run of entries as an entries record (version 2) keeps it: what the run's entries share
/// once, then each entry. The entries of one command are a run (a tick's may be of many
/// members); before, every entry repeated its command's key, merchant and time, which were
/// half of its bytes.
#[derive(Serialize)]
struct RunRecord<'a> {
    first_seq: u64,
    command: &'a str,
    merchant: &'a str,
    at_micros: i64,
    program_version: u32,
    entries: RunEntries<'a>,
}

/// A run's entries, each numbered by its step from the one before (the first's from the
/// run's first number: 0).
struct RunEntries<'a>(&'a [Entry]);

#[derive(Serialize)]
struct RunEntryRecord<'a> {
    seq_step: u64,
    member: u64,
    wallet: Wallet,
    kind: EntryKind,
    amount: i64,
    rule: Option<&'a str>,
    lots: LotPairs<'a>,
}

impl Serialize for RunEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut before = self.0.first().map_or(0, |first| first.seq);
        serializer.collect_seq(self.0.iter().map(|entry| {
            let seq_step = entry.seq - before;
            before = entry.seq;
            RunEntryRecord {
                seq_step,
                member: entry.member,
                wallet: entry.wallet,
                kind: entry.kind,
                amount: entry.amount,
                rule: entry.rule.as_deref(),
                lots: LotPairs(&entry.lots),
            }
        }))
    }
}

/// A run as it is read back.
#[derive(Deserialize)]
struct Run {
    first_seq: u64,
    command: String,
    merchant: String,
    at_micros: i64,
    program_version: u32,
    entries: Vec<RunEntry>,
}

#[derive(Deserialize)]
struct RunEntry {
    seq_step: u64,
    member: u64,
    wallet: Wallet,
    kind: EntryKind,
    amount: i64,
    rule: Option<String>,
    lots: Vec<(u32, i64)>,
}

impl Run {
    fn into_entries(self, out: &mut Vec<LoggedEntry>) {
        let mut seq = self.first_seq;
        for entry in self.entries {
            seq += entry.seq_step;
            out.push(LoggedEntry {
                seq,
                merchant: self.merchant.clone(),
                member: entry.member,
                wallet: entry.wallet,
                kind: entry.kind,
                amount: entry.amount,
                at_micros: self.at_micros,
                command: self.command.clone(),
                rule: entry.rule,
                program_version: self.program_version,
                lots: entry.lots,
            });
        }
    }
}

/// A lot list as `LoggedEntry::lots` is written: (lot, points) pairs.
struct LotPairs<'a>(&'a [crate::core::Slice]);

impl Serialize for LotPairs<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|slice| (slice.lot, slice.points)))
    }
}

/// The most bytes an entries record adds to its runs: `TLYE`, the format version (u16), the
/// count (a variable-length integer, at most 9 bytes) and the checksum.
const ENTRIES_FRAMING_MAX_BYTES: usize = 4 + 2 + 9 + CHECKSUM_BYTES;

/// Whether `entry` continues the run `before` is in: the same command, merchant, time and
/// program version, numbered after it.
fn same_run(before: &Entry, entry: &Entry) -> bool {
    entry.command == before.command
        && entry.merchant == before.merchant
        && entry.at == before.at
        && entry.program_version == before.program_version
        && entry.seq > before.seq
}

/// Each run of entries' encoding (`RunRecord`, bincode) into `items`, one after another,
/// where each ends into `ends` and its first entry's number into `first_seqs`; all replaced.
fn encode_entries(
    entries: &[Entry],
    items: &mut Vec<u8>,
    ends: &mut Vec<usize>,
    first_seqs: &mut Vec<u64>,
) {
    items.clear();
    ends.clear();
    first_seqs.clear();
    let mut text = String::new();
    let mut rest = entries;
    while let Some(first) = rest.first() {
        let len = 1 + rest
            .windows(2)
            .take_while(|pair| same_run(&pair[0], &pair[1]))
            .count();
        let (run, after) = rest.split_at(len);
        text.clear();
        first.command.write_text(&mut text);
        let record = RunRecord {
            first_seq: first.seq,
            command: &text,
            merchant: &first.merchant,
            at_micros: first.at.timestamp_micros(),
            program_version: first.program_version,
            entries: RunEntries(run),
        };
        record
            .serialize(&mut crate::core::encode::Encoder { out: &mut *items })
            .expect("serialising into memory does not fail");
        ends.push(items.len());
        first_seqs.push(first.seq);
        rest = after;
    }
}

/// `TLYE`, format version (u16), the runs of entries (bincode, as `Vec<Run>`: their count,
/// then `encoded`, the encodings of `count` runs), an xxh3-64 checksum of all before; into
/// `value`, replacing what it held.
fn entries_record_into(count: usize, encoded: &[u8], value: &mut Vec<u8>) {
    value.clear();
    value.extend_from_slice(&ENTRIES_MAGIC);
    value.extend_from_slice(&ENTRIES_FORMAT_VERSION.to_le_bytes());
    crate::core::encode::Encoder { out: &mut *value }.length(count);
    value.extend_from_slice(encoded);
    let checksum = xxhash_rust::xxh3::xxh3_64(value);
    value.extend_from_slice(&checksum.to_le_bytes());
}

/// Cuts items whose encodings lie one after another in `items`, the first `n` ending at
/// `ends[n - 1]`, into values of consecutive items, each adding `framing` bytes: which items
/// each value takes and their encodings, in order.
///
/// Each value but the last fills the largest leaf of a power of two pages that the items
/// left would fill: a value one byte over a power of two pages took twice as many, and the
/// padding was zeroed, checksummed and written like the rest (28% of a group's batch and 46%
/// of its entries in `tally ingest`). The largest value comes first and the smallest last,
/// since the next transaction reads the last leaf again to append after it. No value
/// exceeds `max_bytes` unless a single item does.
fn cut_into_values<'a>(
    items: &'a [u8],
    ends: &'a [usize],
    framing: usize,
    max_bytes: usize,
) -> impl Iterator<Item = (std::ops::Range<usize>, &'a [u8])> + 'a {
    let mut first = 0;
    std::iter::from_fn(move || {
        if first == ends.len() {
            return None;
        }
        let start_byte = if first == 0 { 0 } else { ends[first - 1] };
        let last_end = ends[ends.len() - 1];
        let budget = value_budget(last_end - start_byte + framing).min(max_bytes);
        let fits = |end: &usize| end - start_byte + framing <= budget;
        let taken = ends[first..]
            .iter()
            .take_while(|end| fits(end))
            .count()
            .max(1);
        let range = first..first + taken;
        first += taken;
        Some((range, &items[start_byte..ends[first - 1]]))
    })
}

/// The bytes the next value may take when `rest` bytes (with framing) are left to write.
fn value_budget(rest: usize) -> usize {
    if rest <= LAST_VALUE_MAX_BYTES {
        return rest;
    }
    let pages = (rest + LEAF_OVERHEAD_BYTES) / REDB_PAGE_BYTES;
    let leaf_pages = 1 << pages.ilog2();
    leaf_pages * REDB_PAGE_BYTES - LEAF_OVERHEAD_BYTES
}

fn decode_entries(first_seq: u64, bytes: &[u8]) -> Result<Vec<LoggedEntry>, LogError> {
    let corrupt = |what: &str| LogError::Corrupt {
        batch: first_seq,
        what: format!("entries from {first_seq}: {what}"),
    };
    if bytes.len() < 6 + CHECKSUM_BYTES {
        return Err(corrupt("shorter than a header"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != tail {
        return Err(corrupt("checksum mismatch"));
    }
    if body[..4] != ENTRIES_MAGIC {
        return Err(corrupt("not a tally entries record"));
    }
    use bincode::Options;
    let encoded = &body[6..];
    let options = crate::core::bounded_bincode(encoded.len());
    match u16::from_le_bytes([body[4], body[5]]) {
        // Version 1: every entry whole (`Vec<LoggedEntry>`).
        1 => options
            .deserialize(encoded)
            .map_err(|e| corrupt(&e.to_string())),
        2 => {
            let runs: Vec<Run> = options
                .deserialize(encoded)
                .map_err(|e| corrupt(&e.to_string()))?;
            let mut entries = Vec::with_capacity(runs.iter().map(|r| r.entries.len()).sum());
            for run in runs {
                run.into_entries(&mut entries);
            }
            Ok(entries)
        }
        version => Err(corrupt(&format!(
            "format version {version}, this engine reads 1 to {ENTRIES_FORMAT_VERSION}"
        ))),
    }
}

fn storage_error(path: &Path, error: &dyn std::fmt::Display) -> LogError {
    LogError::Storage {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

/// Switches for a disk that misbehaves on cue: every fsync fails, or every write finds the
/// disk full. Shared with the log opened by `CommandLog::open_faulty`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    failing_syncs: Arc<AtomicBool>,
    full: Arc<AtomicBool>,
}

impl Faults {
    pub fn fail_syncs(&self, on: bool) {
        self.failing_syncs.store(on, Ordering::SeqCst);
    }

    pub fn fill_disk(&self, on: bool) {
        self.full.store(on, Ordering::SeqCst);
    }
}

#[derive(Debug)]
struct FaultyDisk {
    file: FileBackend,
    faults: Faults,
}

impl FaultyDisk {
    fn check_space(&self) -> Result<(), std::io::Error> {
        const NO_SPACE_LEFT: i32 = 28; // ENOSPC
        match self.faults.full.load(Ordering::SeqCst) {
            true => Err(std::io::Error::from_raw_os_error(NO_SPACE_LEFT)),
            false => Ok(()),
        }
    }
}

impl StorageBackend for FaultyDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, std::io::Error> {
        self.file.read(offset, len)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if len > self.file.len()? {
            self.check_space()?;
        }
        self.file.set_len(len)
    }

    fn sync_data(&self, eventual: bool) -> Result<(), std::io::Error> {
        if self.faults.failing_syncs.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("fsync failed (injected)"));
        }
        self.file.sync_data(eventual)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check_space()?;
        self.file.write(offset, data)
    }
}

/// Each record's part of a batch into `items`, one after another (engine time in
/// microseconds since the epoch (i64), the command's length (u32), its form (u8), the command),
/// and where each ends into `ends`; both replaced. A command that came as a JSON line is kept
/// as that line; any other as its rkyv archive (`archive` is the buffer for it), which costs
/// a fraction of writing JSON, unless the archive would lose part of it.
fn encode_records(
    records: &[Logged],
    items: &mut Vec<u8>,
    ends: &mut Vec<usize>,
    archive: &mut AlignedVec,
) {
    items.clear();
    ends.clear();
    for record in records {
        items.extend_from_slice(&record.now.timestamp_micros().to_le_bytes());
        // The command is written in place; its length goes before it once known.
        let length_at = items.len();
        items.extend_from_slice(&[0; 4]);
        match &record.json {
            Some(json) => {
                items.push(FORM_JSON);
                items.extend_from_slice(json.as_bytes());
            }
            None if wire::archives_exactly(&record.command) => {
                items.push(FORM_ARCHIVE);
                *archive = wire::archive_command(&record.command, std::mem::take(archive));
                items.extend_from_slice(archive);
            }
            None => {
                items.push(FORM_JSON);
                record.command.write_json(items);
            }
        }
        let length = u32::try_from(items.len() - length_at - 5).expect("a command under 4 GiB");
        items[length_at..length_at + 4].copy_from_slice(&length.to_le_bytes());
        ends.push(items.len());
    }
}

/// `TLY1`, format version (u16), count (u32), then `encoded`, the parts of `count` records
/// (`encode_records`); last an xxh3-64 checksum of everything before it. All integers
/// little-endian. Into `value`, replacing what it held.
fn batch_into(count: usize, encoded: &[u8], value: &mut Vec<u8>) {
    value.clear();
    value.extend_from_slice(&MAGIC);
    value.extend_from_slice(&BATCH_FORMAT_VERSION.to_le_bytes());
    let count = u32::try_from(count).expect("a group under 4 billion commands");
    value.extend_from_slice(&count.to_le_bytes());
    value.extend_from_slice(encoded);
    let checksum = xxhash_rust::xxh3::xxh3_64(value);
    value.extend_from_slice(&checksum.to_le_bytes());
}

pub fn decode(batch: u64, bytes: &[u8]) -> Result<Vec<Logged>, LogError> {
    let corrupt = |what: &str| LogError::Corrupt {
        batch,
        what: what.to_string(),
    };
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(corrupt("shorter than a header"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != tail {
        return Err(corrupt("checksum mismatch"));
    }
    if body[..4] != MAGIC {
        return Err(corrupt("not a tally log batch"));
    }
    let version = u16::from_le_bytes([body[4], body[5]]);
    if !(1..=BATCH_FORMAT_VERSION).contains(&version) {
        return Err(corrupt(&format!(
            "format version {version}, this engine reads 1 to {BATCH_FORMAT_VERSION}"
        )));
    }
    // Version 1 has no form byte: every command is JSON.
    let form_bytes = usize::from(version >= 2);
    let count = u32::from_le_bytes(body[6..10].try_into().expect("4 bytes")) as usize;
    let mut records = Vec::with_capacity(count.min(body.len() / 12));
    let mut at = HEADER_BYTES;
    for index in 0..count {
        let cut_short = || corrupt(&format!("command {index} is cut short"));
        let header = body.get(at..at + 12 + form_bytes).ok_or_else(cut_short)?;
        let micros = i64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let form = header.get(12).copied().unwrap_or(FORM_JSON);
        at += header.len();
        let bytes = body.get(at..at + len).ok_or_else(cut_short)?;
        at += len;
        let command = decode_command(form, bytes)
            .map_err(|what| corrupt(&format!("command {index}: {what}")))?;
        let now = chrono::DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| corrupt(&format!("command {index}: bad time")))?;
        records.push(Logged::new(now, command));
    }
    if at != body.len() {
        return Err(corrupt("bytes after the last command"));
    }
    Ok(records)
}

/// A logged command in its form (`FORM_JSON` or `FORM_ARCHIVE`).
fn decode_command(form: u8, bytes: &[u8]) -> Result<Command, String> {
    match form {
        FORM_JSON => {
            let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
            parse_command_line(text).map_err(|e| e.to_string())
        }
        FORM_ARCHIVE => wire::unarchive_command(bytes).map_err(|e| e.to_string()),
        other => Err(format!("unknown form {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Workload, WorkloadConfig};

    /// What a kill during creation leaves (a half-written file beside the log) is removed,
    /// and the log made in its place opens again with its tables.
    #[test]
    fn a_log_is_created_whole_beside_its_place() {
        let dir = std::env::temp_dir().join(format!("tally-log-create-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.redb");
        let unfinished = dir.join("log.redb.new");
        std::fs::write(&unfinished, vec![0x5a; 1 << 20]).unwrap();
        let log = CommandLog::open(&path).unwrap();
        assert!(!unfinished.exists());
        log.append(&records(3), &[]).unwrap();
        drop(log);
        let reopened = CommandLog::open(&path).unwrap();
        assert_eq!(reopened.last_batch().unwrap(), Some(0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn records(count: usize) -> Vec<Logged> {
        Workload::new(WorkloadConfig::demo(100))
            .take(count)
            .map(|command| Logged::new(command.at, command))
            .collect()
    }

    #[test]
    fn batches_survive_reopening_in_order() {
        let dir = std::env::temp_dir().join(format!("tally-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.redb");
        let written = records(50);
        {
            let log = CommandLog::open(&path).unwrap();
            log.append(&written[..20], &[]).unwrap();
            log.append(&written[20..], &[]).unwrap();
        }
        let log = CommandLog::open(&path).unwrap();
        assert_eq!(log.batches(), 2);
        let mut read = Vec::new();
        assert_eq!(log.replay(|logged| read.push(logged)).unwrap(), 2);
        assert_eq!(read, written);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The entries' bytes as they were first written: each entry copied into a
    /// `LoggedEntry`, the list serialised whole.
    /// The entries as the log gives them back.
    fn logged(entries: &[Entry]) -> Vec<LoggedEntry> {
        entries
            .iter()
            .map(|entry| LoggedEntry {
                seq: entry.seq,
                merchant: entry.merchant.to_string(),
                member: entry.member,
                wallet: entry.wallet,
                kind: entry.kind,
                amount: entry.amount,
                at_micros: entry.at.timestamp_micros(),
                command: entry.command.text(),
                rule: entry.rule.as_deref().map(str::to_string),
                program_version: entry.program_version,
                lots: entry.lots.iter().map(|s| (s.lot, s.points)).collect(),
            })
            .collect()
    }

    /// An entries record of version 1: every entry whole.
    fn entries_as_first_written(entries: &[Entry]) -> Vec<u8> {
        use bincode::Options;
        let mut bytes = ENTRIES_MAGIC.to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        crate::core::state_bincode()
            .serialize_into(&mut bytes, &logged(entries))
            .unwrap();
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Entries are written in runs, a command's together, and read back as they were; records
    /// of version 1, every entry whole, still read.
    #[test]
    fn entries_are_written_in_runs_and_read_back() {
        let mut ledger = crate::core::tests::demo_ledger(40, 400, 100);
        let entries = ledger.take_entries();
        assert!(entries.len() > 500, "{}", entries.len());
        assert!(
            entries.iter().any(|e| e.rule.is_none()) && entries.iter().any(|e| e.lots.len() > 1)
        );
        // Buffers holding something already: each is replaced.
        let (mut items, mut ends, mut firsts) = (vec![9; 7], vec![3], vec![4]);
        let mut bytes = vec![1, 2, 3];
        encode_entries(&entries[..9], &mut items, &mut ends, &mut firsts);
        encode_entries(&entries, &mut items, &mut ends, &mut firsts);
        let commands = 1 + entries
            .windows(2)
            .filter(|pair| pair[0].command != pair[1].command)
            .count();
        assert_eq!(ends.len(), commands);
        assert_eq!(firsts.len(), commands);
        assert_eq!(firsts[0], entries[0].seq);
        entries_record_into(ends.len(), &items, &mut bytes);
        let first_written = entries_as_first_written(&entries);
        assert!(bytes.len() < first_written.len() * 2 / 3);
        let read = decode_entries(entries[0].seq, &bytes).unwrap();
        assert_eq!(read, logged(&entries));
        assert_eq!(
            decode_entries(entries[0].seq, &first_written).unwrap(),
            read
        );
    }

    /// `records` as one batch, encoded into the buffers given.
    fn encode_with(records: &[Logged], items: &mut Vec<u8>, value: &mut Vec<u8>) {
        let mut ends = vec![1, 2];
        encode_records(records, items, &mut ends, &mut AlignedVec::new());
        assert_eq!(ends.len(), records.len());
        batch_into(records.len(), items, value);
    }

    fn encode(records: &[Logged]) -> Vec<u8> {
        let mut value = Vec::new();
        encode_with(records, &mut Vec::new(), &mut value);
        value
    }

    #[test]
    fn a_batch_encoded_into_a_used_buffer_is_the_same() {
        let written = records(30);
        let mut items = Vec::new();
        let mut value = Vec::new();
        encode_with(&records(5), &mut items, &mut value);
        encode_with(&written, &mut items, &mut value);
        assert_eq!(value, encode(&written));
        assert_eq!(decode(0, &value).unwrap(), written);
    }

    /// Items of `sizes` bytes each, as `encode_records` lays them out.
    fn laid_out(sizes: &[usize]) -> (Vec<u8>, Vec<usize>) {
        let ends: Vec<usize> = sizes
            .iter()
            .scan(0, |end, size| {
                *end += size;
                Some(*end)
            })
            .collect();
        let items = (0..ends.last().copied().unwrap_or(0))
            .map(|at| at as u8)
            .collect();
        (items, ends)
    }

    /// The pages of the leaf that holds a value of `bytes` bytes.
    fn leaf_pages(bytes: usize) -> usize {
        (bytes + LEAF_OVERHEAD_BYTES)
            .div_ceil(REDB_PAGE_BYTES)
            .next_power_of_two()
    }

    /// A group of 1.5 MB as `tally ingest` writes under load: values that each fill their
    /// leaf, largest first, the rest in one last value.
    #[test]
    fn a_large_group_is_cut_into_values_that_fill_their_leaves() {
        let (items, ends) = laid_out(&[380; 4000]);
        let framing = HEADER_BYTES + CHECKSUM_BYTES;
        let values: Vec<_> = cut_into_values(&items, &ends, framing, 64 << 20).collect();
        let sizes: Vec<usize> = values
            .iter()
            .map(|(_, bytes)| bytes.len() + framing)
            .collect();
        assert!(values.len() > 1 && values.len() < 8, "{sizes:?}");
        assert!(sizes.windows(2).all(|pair| pair[0] >= pair[1]), "{sizes:?}");
        let (last, filled) = sizes.split_last().unwrap();
        assert!(*last <= LAST_VALUE_MAX_BYTES, "{sizes:?}");
        for &size in filled {
            let leaf_bytes = leaf_pages(size) * REDB_PAGE_BYTES;
            assert!(size + LEAF_OVERHEAD_BYTES + 380 > leaf_bytes, "{sizes:?}");
        }
        let padding: usize = sizes
            .iter()
            .map(|&size| leaf_pages(size) * REDB_PAGE_BYTES - size)
            .sum();
        let total: usize = sizes.iter().sum();
        assert!(
            padding * 20 < total,
            "{padding} bytes of padding for {total}"
        );
    }

    proptest::proptest! {
        /// However items are sized and whatever the limit, the values take every item once,
        /// in order, and none is over the limit unless one item alone is.
        #[test]
        fn values_take_every_item_once_in_order(
            sizes in proptest::collection::vec(1usize..20_000, 1..400),
            max_bytes in proptest::sample::select(vec![16 << 10, 64 << 20]),
        ) {
            let (items, ends) = laid_out(&sizes);
            let framing = HEADER_BYTES + CHECKSUM_BYTES;
            let mut next = 0;
            let mut joined = Vec::new();
            for (taken, bytes) in cut_into_values(&items, &ends, framing, max_bytes) {
                proptest::prop_assert_eq!(taken.start, next);
                proptest::prop_assert!(!taken.is_empty());
                let alone = taken.len() == 1;
                proptest::prop_assert!(alone || bytes.len() + framing <= max_bytes);
                next = taken.end;
                joined.extend_from_slice(bytes);
            }
            proptest::prop_assert_eq!(next, sizes.len());
            proptest::prop_assert_eq!(joined, items);
        }
    }

    /// A group's commands over the batch limit are written as several batches, in one
    /// transaction; a single command over it gets a batch of its own.
    #[test]
    fn a_group_over_the_batch_limit_is_written_as_several_batches() {
        let dir = std::env::temp_dir().join(format!("tally-log-split-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log.redb");
        let mut written = records(200);
        let (mut items, mut ends) = (Vec::new(), Vec::new());
        encode_records(&written, &mut items, &mut ends, &mut AlignedVec::new());
        let framing = HEADER_BYTES + CHECKSUM_BYTES;
        assert!(cut_into_values(&items, &ends, framing, MAX_BATCH_BYTES).count() > 1);
        let mut huge = written[0].clone();
        huge.command.key = tally_protocol::IdemKey::Id(7);
        huge.command.body = tally_protocol::Body::LoadProgram(tally_protocol::LoadProgram {
            program: "#".repeat(MAX_BATCH_BYTES * 2),
        });
        written.insert(100, huge);
        {
            let log = CommandLog::open(&path).unwrap();
            log.append(&written, &[]).unwrap();
            assert!(log.batches() >= 4, "{}", log.batches());
        }
        let log = CommandLog::open(&path).unwrap();
        let mut read = Vec::new();
        let mut batches = Vec::new();
        let count = log
            .replay_batches_after(None, |batch, logged| {
                batches.push(batch);
                read.push(logged);
            })
            .unwrap();
        assert_eq!(count, log.batches());
        assert_eq!(read, written);
        let alone = batches[100];
        assert_eq!(batches.iter().filter(|&&b| b == alone).count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A command that came as a JSON line is logged as that line, however it was spelled,
    /// and reads back as the same command.
    #[test]
    fn a_command_is_logged_as_the_line_it_came_as() {
        let mut written = records(3);
        let canonical = written[1].command.to_json_line();
        let value: serde_json::Value = serde_json::from_str(&canonical).unwrap();
        // Another spelling of the same command: keys in another order, spaces.
        let object = value.as_object().unwrap();
        let respelled = format!(
            "{{ {} }}",
            object
                .iter()
                .rev()
                .map(|(key, value)| format!("{key:?} : {value}"))
                .collect::<Vec<_>>()
                .join(" , ")
        );
        assert_ne!(respelled, canonical);
        written[1].json = Some(respelled.clone());
        let bytes = encode(&written);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(&respelled) && !text.contains(&canonical));
        assert_eq!(decode(0, &bytes).unwrap(), written);
    }

    /// The form byte of each command in a version 2 batch.
    fn forms(batch: &[u8]) -> Vec<u8> {
        let count = u32::from_le_bytes(batch[6..10].try_into().unwrap()) as usize;
        let mut at = HEADER_BYTES;
        let mut forms = Vec::new();
        for _ in 0..count {
            let len = u32::from_le_bytes(batch[at + 8..at + 12].try_into().unwrap()) as usize;
            forms.push(batch[at + 12]);
            at += 13 + len;
        }
        assert_eq!(at, batch.len() - CHECKSUM_BYTES);
        forms
    }

    /// Commands are kept as archives, except a line as it came and a command whose time an
    /// archive would round; all read back as written.
    #[test]
    fn commands_are_archived_unless_that_would_change_them() {
        let mut written = records(4);
        written[1].json = Some(written[1].command.to_json_line());
        written[2].command.at += chrono::TimeDelta::nanoseconds(1);
        assert!(!wire::archives_exactly(&written[2].command));
        let bytes = encode(&written);
        assert_eq!(
            forms(&bytes),
            [FORM_ARCHIVE, FORM_JSON, FORM_JSON, FORM_ARCHIVE]
        );
        assert_eq!(decode(0, &bytes).unwrap(), written);
    }

    /// A log written before archives (every command JSON, no form byte) still reads.
    #[test]
    fn a_version_1_batch_still_reads() {
        let written = records(3);
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&(written.len() as u32).to_le_bytes());
        for record in &written {
            let json = record.command.to_json_line();
            bytes.extend_from_slice(&record.now.timestamp_micros().to_le_bytes());
            bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
            bytes.extend_from_slice(json.as_bytes());
        }
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        assert_eq!(decode(0, &bytes).unwrap(), written);
        bytes[4] = 3;
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..bytes.len() - 8]);
        let end = bytes.len() - 8;
        bytes[end..].copy_from_slice(&checksum.to_le_bytes());
        let error = decode(0, &bytes).unwrap_err().to_string();
        assert!(error.contains("format version 3"), "{error}");
    }

    #[test]
    fn a_damaged_batch_is_reported_with_its_place() {
        let mut bytes = encode(&records(3));
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        let error = decode(7, &bytes).unwrap_err().to_string();
        assert!(
            error.contains("batch 7") && error.contains("checksum"),
            "{error}"
        );
        assert!(decode(7, &bytes[..5]).is_err());
    }
}
