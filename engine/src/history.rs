//! Balances at a past time (`--as-of`): the newest checkpoint taken by then (`history/`
//! keeps older ones, `docs/storage.md`), then the log's commands up to then, at the engine
//! times they were applied with, then the time-driven work due by then.

use std::path::Path;

use crate::checkpoint::{self, CheckpointError};
use crate::core::Ledger;
use crate::ingest::reapply;
use crate::log::{CommandLog, LogError};
use crate::replay::tick_if_due;
use crate::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("balances as of {asked} are not kept: {}", oldest_sentence(.oldest))]
    NotKept {
        asked: Timestamp,
        oldest: Option<Timestamp>,
    },
}

fn oldest_sentence(oldest: &Option<Timestamp>) -> String {
    match oldest {
        Some(oldest) => format!(
            "the oldest time available is {oldest} (keep more checkpoints with --keep-checkpoints)"
        ),
        None => "no checkpoint or log that old is kept".to_string(),
    }
}

/// The state at a past time.
#[derive(Debug)]
pub struct AsOf {
    pub ledger: Ledger,
    /// The last log batch with a command applied (its commands after the time are not).
    pub log_position: Option<u64>,
    /// The last ledger entry the state includes.
    pub last_entry_seq: u64,
}

/// Rebuilds the state as it was at `at` from the data directory of a stopped engine and
/// its log.
pub fn ledger_as_of(data: &Path, log: &CommandLog, at: Timestamp) -> Result<AsOf, HistoryError> {
    let checkpoints = checkpoint::all(data)?;
    let base = checkpoints
        .iter()
        .filter(|(_, now, _)| now.is_none_or(|now| now <= at))
        .max_by_key(|(batch, _, _)| *batch);
    let (mut ledger, mut log_position) = match base {
        Some((_, _, path)) => {
            let found = checkpoint::read_file(path)?;
            (found.ledger, Some(found.last_batch))
        }
        // Without a checkpoint that old, only a log that still starts at its first batch.
        None if log.first_batch()?.is_none_or(|first| first == 0) => (Ledger::new(), None),
        None => {
            let oldest = checkpoints.iter().filter_map(|(_, now, _)| *now).min();
            return Err(HistoryError::NotKept { asked: at, oldest });
        }
    };
    log.replay_batches_after(log_position, |batch, logged| {
        if logged.now > at {
            return;
        }
        reapply(&mut ledger, &logged);
        log_position = Some(batch);
    })?;
    // The work due by then, as a running engine would have done it at that time.
    let names: Vec<String> = ledger.merchants().map(|m| m.name.to_string()).collect();
    for name in names {
        let _ = tick_if_due(&mut ledger, &name, at);
        ledger.clear_outbox();
    }
    ledger.verify();
    let last_entry_seq = ledger.last_entry_seq();
    Ok(AsOf {
        ledger,
        log_position,
        last_entry_seq,
    })
}
