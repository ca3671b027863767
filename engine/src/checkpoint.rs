//! Checkpoints: the whole ledger written to one file, so that recovery loads it and replays
//! only the log after it. Recovery time then follows the size of the state, not the age of
//! the log, and the log before a checkpoint can be compacted.
//!
//! The file is written beside the log as `checkpoint.tmp`, fsynced, renamed over
//! `checkpoint` and the directory fsynced: a crash at any step leaves either the old
//! checkpoint or the new one, never a mix. The format is in `docs/storage.md`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::core::{Ledger, LedgerImage};
use crate::Timestamp;

const MAGIC: [u8; 4] = *b"TLYC";
/// Version 4 adds each merchant's name table, and order records name rules, SKUs and
/// promotions by number in it; version 3 keeps the amounts of result summaries as magnitude
/// and scale (a few bytes instead of sixteen); version 2 kept order records and result
/// summaries packed (`core::packed`); versions 1 to 3 are still read.
const FORMAT_VERSION: u16 = 4;
const OLDEST_READ_VERSION: u16 = 1;
/// Magic, format version, last batch, engine time, body length.
const HEADER_BYTES: usize = 4 + 2 + 8 + 8 + 8;
const CHECKSUM_BYTES: usize = 8;
const NO_TIME: i64 = i64::MIN;
pub const FILE_NAME: &str = "checkpoint";
const TEMPORARY_NAME: &str = "checkpoint.tmp";
/// Older checkpoints kept for `--as-of`: `history/checkpoint-<last batch>`.
const HISTORY_DIR: &str = "history";
const HISTORY_PREFIX: &str = "checkpoint-";

/// A checkpoint read back: the state after log batch `last_batch`.
#[derive(Debug)]
pub struct Checkpoint {
    pub last_batch: u64,
    pub now: Option<Timestamp>,
    pub ledger: Ledger,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("writing the checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file does not read back as written: the engine refuses to guess.
    #[error("the checkpoint {path} is corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: usize,
        what: String,
    },
}

/// A checkpoint's bytes in segments (the header first), without the checksum, which is
/// computed as they are written: encoding reads the state, so the engine waits for it;
/// hashing and writing do not, and happen on another thread.
pub struct Encoded {
    segments: Vec<Vec<u8>>,
}

impl Encoded {
    /// The last log batch the checkpoint holds.
    pub fn last_batch(&self) -> u64 {
        u64::from_le_bytes(self.segments[0][6..14].try_into().expect("a header"))
    }

    /// The file's size: the segments and the checksum.
    pub fn file_bytes(&self) -> usize {
        self.segments.iter().map(Vec::len).sum::<usize>() + CHECKSUM_BYTES
    }

    /// The memory the segments hold, for the next checkpoint to write into.
    pub fn into_buffers(self) -> Vec<Vec<u8>> {
        self.segments
    }

    /// The whole file: the segments and the checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.segments.concat();
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }
}

/// Serialises the ledger, as it is after log batch `last_batch`, for a checkpoint. This is
/// the part that needs the state (on every core: the engine waits for it); writing the bytes
/// can happen on another thread. `buffers` (the previous checkpoint's, from
/// `Encoded::into_buffers`) are written into rather than fresh memory, which is slow to
/// touch on a virtual machine.
pub fn encode(
    ledger: &Ledger,
    last_batch: u64,
    now: Option<Timestamp>,
    buffers: Vec<Vec<u8>>,
) -> Encoded {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The same order as the segments: the header's, then the image's.
    let mut buffers = buffers.into_iter();
    let mut header = buffers.next().unwrap_or_default();
    header.clear();
    let mut segments = ledger.image().encode_segments(threads, buffers.collect());
    let body_bytes: usize = segments.iter().map(Vec::len).sum();
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&last_batch.to_le_bytes());
    let micros = now.map_or(NO_TIME, |now| now.timestamp_micros());
    header.extend_from_slice(&micros.to_le_bytes());
    header.extend_from_slice(&(body_bytes as u64).to_le_bytes());
    segments.insert(0, header);
    Encoded { segments }
}

/// Writes a checkpoint durably into `dir`, replacing the previous checkpoint only once the
/// new one is on disk.
pub fn write(dir: &Path, encoded: &Encoded) -> Result<(), CheckpointError> {
    let temporary = dir.join(TEMPORARY_NAME);
    let target = dir.join(FILE_NAME);
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Write { path, source }
    };
    let mut file = std::fs::File::create(&temporary).map_err(error(&temporary))?;
    let mut checksum = xxhash_rust::xxh3::Xxh3::new();
    for segment in &encoded.segments {
        checksum.update(segment);
        file.write_all(segment).map_err(error(&temporary))?;
    }
    file.write_all(&checksum.digest().to_le_bytes())
        .map_err(error(&temporary))?;
    file.sync_all().map_err(error(&temporary))?;
    drop(file);
    std::fs::rename(&temporary, &target).map_err(error(&target))?;
    // The rename is durable only once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(error(dir))
}

/// Writes checkpoint bytes as `write` does, first keeping the checkpoint they replace in the
/// history (up to `keep` older checkpoints, the oldest dropped first). Returns the batch the
/// log may be compacted before: the oldest checkpoint kept, so that any time since it can be
/// rebuilt (`--as-of`).
pub fn write_keeping(dir: &Path, encoded: &Encoded, keep: usize) -> Result<u64, CheckpointError> {
    let last_batch = encoded.last_batch();
    if keep > 0 {
        keep_current(dir, keep)?;
    }
    write(dir, encoded)?;
    if keep == 0 {
        return Ok(last_batch);
    }
    // Until the history is full, the log's start (the empty state) is the oldest state kept.
    let kept = history(dir)?;
    Ok(match kept.first() {
        Some((oldest, _)) if kept.len() >= keep => (*oldest).min(last_batch),
        _ => 0,
    })
}

/// Links the current checkpoint into the history (it is replaced next, never changed) and
/// drops the oldest ones beyond `keep`.
fn keep_current(dir: &Path, keep: usize) -> Result<(), CheckpointError> {
    let current = dir.join(FILE_NAME);
    let Some((last_batch, _)) = read_header(&current)? else {
        return Ok(());
    };
    let history_dir = dir.join(HISTORY_DIR);
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Write { path, source }
    };
    std::fs::create_dir_all(&history_dir).map_err(error(&history_dir))?;
    let kept = history_dir.join(format!("{HISTORY_PREFIX}{last_batch}"));
    if !kept.exists() {
        std::fs::hard_link(&current, &kept).map_err(error(&kept))?;
    }
    let mut older = history(dir)?;
    while older.len() > keep {
        let (_, path) = older.remove(0);
        std::fs::remove_file(&path).map_err(error(&path))?;
    }
    std::fs::File::open(&history_dir)
        .and_then(|d| d.sync_all())
        .map_err(error(&history_dir))
}

/// The kept older checkpoints, oldest first: (last batch, path).
pub fn history(dir: &Path) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
    let history_dir = dir.join(HISTORY_DIR);
    let entries = match std::fs::read_dir(&history_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: history_dir,
                source,
            })
        }
    };
    let mut kept: Vec<(u64, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().to_str()?.to_string();
            let batch = name.strip_prefix(HISTORY_PREFIX)?.parse().ok()?;
            Some((batch, entry.path()))
        })
        .collect();
    kept.sort();
    Ok(kept)
}

/// Every checkpoint there is, the current one last: (last batch, engine time, path).
pub fn all(dir: &Path) -> Result<Vec<(u64, Option<Timestamp>, PathBuf)>, CheckpointError> {
    let mut found = Vec::new();
    let paths = history(dir)?.into_iter().map(|(_, path)| path);
    for path in paths.chain([dir.join(FILE_NAME)]) {
        if let Some((last_batch, now)) = read_header(&path)? {
            found.push((last_batch, now, path));
        }
    }
    Ok(found)
}

/// A checkpoint's last batch and engine time, from its header alone.
fn read_header(path: &Path) -> Result<Option<(u64, Option<Timestamp>)>, CheckpointError> {
    use std::io::Read;
    let mut header = [0u8; HEADER_BYTES];
    let read = std::fs::File::open(path).and_then(|mut file| file.read_exact(&mut header));
    match read {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    if header[..4] != MAGIC {
        return Err(CheckpointError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            what: "not a tally checkpoint".into(),
        });
    }
    let field = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let micros = field(14) as i64;
    let now = (micros != NO_TIME)
        .then(|| chrono::DateTime::from_timestamp_micros(micros))
        .flatten();
    Ok(Some((field(6), now)))
}

/// Reads one checkpoint file, checked whole.
pub fn read_file(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = map(path).map_err(|source| CheckpointError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(path, &bytes)
}

/// Reads the checkpoint in `dir`, if there is one, and checks it whole before using it.
pub fn read(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let path = dir.join(FILE_NAME);
    let bytes = match map(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CheckpointError::Read { path, source }),
    };
    decode(&path, &bytes).map(Some)
}

/// The file's bytes, mapped rather than read: a checkpoint is as large as the state, and
/// reading it would first copy it all into fresh memory, which is slow to touch on a virtual
/// machine; the mapping uses the page cache's own pages.
#[allow(unsafe_code)]
fn map(path: &Path) -> std::io::Result<memmap2::Mmap> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the mapping is read-only and a checkpoint file is never written in place: a new
    // one is written beside it and renamed over it, which leaves this inode as it was.
    unsafe { memmap2::Mmap::map(&file) }
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |offset: usize, what: &str| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what: what.to_string(),
    };
    if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES {
        return Err(corrupt(0, "shorter than a header"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != tail {
        return Err(corrupt(body.len(), "checksum mismatch"));
    }
    if body[..4] != MAGIC {
        return Err(corrupt(0, "not a tally checkpoint"));
    }
    let version = u16::from_le_bytes([body[4], body[5]]);
    if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(corrupt(
            4,
            &format!(
                "format version {version}, this engine reads {OLDEST_READ_VERSION} to {FORMAT_VERSION}"
            ),
        ));
    }
    let field = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    let last_batch = field(6);
    let micros = field(14) as i64;
    let body_bytes = field(22);
    if body_bytes != (body.len() - HEADER_BYTES) as u64 {
        return Err(corrupt(22, "body length does not match the file"));
    }
    let now = match micros {
        NO_TIME => None,
        micros => Some(
            chrono::DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| corrupt(14, "engine time out of range"))?,
        ),
    };
    let state = &body[HEADER_BYTES..];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let image = LedgerImage::decode(state, threads, version)
        .map_err(|e| corrupt(HEADER_BYTES, &format!("state does not decode: {e}")))?;
    let ledger = Ledger::from_image(image).map_err(|e| corrupt(HEADER_BYTES, &e.to_string()))?;
    Ok(Checkpoint {
        last_batch,
        now,
        ledger,
        bytes: bytes.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

    fn busy_ledger(workload: &mut Workload) -> (Ledger, Timestamp) {
        busy_ledger_of(workload, 3000, 500)
    }

    fn busy_ledger_of(
        workload: &mut Workload,
        commands: usize,
        kept_whole: usize,
    ) -> (Ledger, Timestamp) {
        let mut ledger = Ledger::new();
        // Most results trimmed to summaries, as in a long-running engine.
        ledger.set_results_kept_whole(kept_whole);
        let mut now = None;
        for command in workload.take(commands) {
            if now.is_none() {
                ledger.install_program(DEMO_PROGRAM, command.at).unwrap();
            }
            now = Some(command.at);
            ledger.apply_shared(&command, command.at);
            ledger.clear_outbox();
        }
        (ledger, now.unwrap())
    }

    #[test]
    fn a_checkpoint_restores_a_ledger_that_goes_on_the_same() {
        let mut workload = Workload::new(WorkloadConfig::demo(300));
        let sent: Vec<_> = Workload::new(WorkloadConfig::demo(300))
            .take(3000)
            .collect();
        let (mut ledger, now) = busy_ledger(&mut workload);
        let encoded = encode(&ledger, 41, Some(now), Vec::new());
        let dir = std::env::temp_dir().join(format!("tally-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, &encoded).unwrap();
        let checkpoint = read(&dir).unwrap().expect("written above");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(checkpoint.last_batch, 41);
        assert_eq!(checkpoint.now, Some(now));
        let mut restored = checkpoint.ledger;
        restored.set_results_kept_whole(500);
        assert_eq!(restored.digest(), ledger.digest());
        restored.verify();
        // Duplicates (whole and trimmed), returns of old orders and time-driven work see the
        // same state.
        let resent = sent.into_iter().step_by(7);
        for command in resent.chain(workload.take(2000)) {
            let expected = ledger.apply_shared(&command, command.at);
            let actual = restored.apply_shared(&command, command.at);
            assert_eq!(actual, expected, "{command:?}");
            assert_eq!(restored.take_entries(), ledger.take_entries());
        }
        assert_eq!(restored.digest(), ledger.digest());
    }

    /// `tests/data/checkpoint-v1` was written by the engine before order records and
    /// summaries were packed, `checkpoint-v2` before summaries' amounts were compact,
    /// `checkpoint-v3` before order records named rules and SKUs by number, all three
    /// from the ledger `busy_ledger_of` builds here: 700 demo commands on 60 members, 50
    /// results kept whole.
    #[test]
    fn a_version_1_checkpoint_restores_a_ledger_that_goes_on_the_same() {
        an_older_checkpoint_restores_a_ledger_that_goes_on_the_same("checkpoint-v1");
    }

    #[test]
    fn a_version_2_checkpoint_restores_a_ledger_that_goes_on_the_same() {
        an_older_checkpoint_restores_a_ledger_that_goes_on_the_same("checkpoint-v2");
    }

    #[test]
    fn a_version_3_checkpoint_restores_a_ledger_that_goes_on_the_same() {
        an_older_checkpoint_restores_a_ledger_that_goes_on_the_same("checkpoint-v3");
    }

    /// Restores the file and applies the same commands to it and to the ledger it came from
    /// (many of them duplicates, answered from the summaries): every result and entry equal.
    fn an_older_checkpoint_restores_a_ledger_that_goes_on_the_same(file: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(file);
        let checkpoint = read_file(&path).unwrap();
        assert_eq!(checkpoint.last_batch, 41);
        let mut workload = Workload::new(WorkloadConfig::demo(60));
        let (mut ledger, now) = busy_ledger_of(&mut workload, 700, 50);
        assert_eq!(checkpoint.now, Some(now));
        assert_eq!(
            format!("{:032x}", ledger.digest()),
            "873d987aed48e83f9c0c4e28fe9f723d"
        );
        let mut restored = checkpoint.ledger;
        restored.set_results_kept_whole(50);
        assert_eq!(restored.digest(), ledger.digest());
        let sent = Workload::new(WorkloadConfig::demo(60)).take(700);
        for command in sent.step_by(3).chain(workload.take(700)) {
            let expected = ledger.apply_shared(&command, command.at);
            assert_eq!(restored.apply_shared(&command, command.at), expected);
            assert_eq!(restored.take_entries(), ledger.take_entries());
        }
        assert_eq!(restored.digest(), ledger.digest());
    }

    #[test]
    fn older_checkpoints_are_kept_and_the_log_is_compacted_only_before_the_oldest() {
        let (ledger, now) = busy_ledger(&mut Workload::new(WorkloadConfig::demo(50)));
        let dir = std::env::temp_dir().join(format!("tally-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let keep_two =
            |batch| write_keeping(&dir, &encode(&ledger, batch, Some(now), Vec::new()), 2);
        // Until two older ones are kept, the log's start is the oldest state: no compaction.
        assert_eq!(keep_two(10).unwrap(), 0);
        assert_eq!(keep_two(20).unwrap(), 0);
        assert_eq!(keep_two(30).unwrap(), 10);
        assert_eq!(keep_two(40).unwrap(), 20);
        let kept = history(&dir).unwrap();
        let batches: Vec<u64> = kept.iter().map(|(batch, _)| *batch).collect();
        assert_eq!(batches, [20, 30]);
        assert_eq!(read_file(&kept[0].1).unwrap().last_batch, 20);
        let every: Vec<(u64, Option<Timestamp>)> = all(&dir)
            .unwrap()
            .into_iter()
            .map(|(b, t, _)| (b, t))
            .collect();
        assert_eq!(every, [(20, Some(now)), (30, Some(now)), (40, Some(now))]);
        // Keeping none compacts up to the new checkpoint, as before.
        assert_eq!(
            write_keeping(&dir, &encode(&ledger, 50, Some(now), Vec::new()), 0).unwrap(),
            50
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_checkpoint_is_refused_with_its_place() {
        let (ledger, now) = busy_ledger(&mut Workload::new(WorkloadConfig::demo(300)));
        let mut bytes = encode(&ledger, 7, Some(now), Vec::new()).to_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        let error = decode(Path::new("checkpoint"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(error.contains("checksum"), "{error}");
        assert!(decode(Path::new("checkpoint"), &bytes[..10]).is_err());
    }

    #[test]
    fn a_damaged_length_under_a_good_checksum_is_refused_not_allocated() {
        let (ledger, now) = busy_ledger(&mut Workload::new(WorkloadConfig::demo(50)));
        let mut bytes = encode(&ledger, 3, Some(now), Vec::new()).to_bytes();
        // Lengths of 2^64-1 everywhere at the start of the state, checksum made to match:
        // what a bug writing the file could leave.
        let body_end = bytes.len() - CHECKSUM_BYTES;
        bytes[HEADER_BYTES..HEADER_BYTES + 64].fill(0xFF);
        let checksum = xxhash_rust::xxh3::xxh3_64(&bytes[..body_end]);
        bytes[body_end..].copy_from_slice(&checksum.to_le_bytes());
        let error = decode(Path::new("checkpoint"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(error.contains("state does not decode"), "{error}");
    }
}
