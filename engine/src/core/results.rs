//! A merchant's remembered results, each in a slot its receipt names. The recent ones are
//! kept whole in a window, oldest first; a result leaving the window is replaced by its
//! summary in the next slot of the part that only grows.
//!
//! Why slots: a receipt that held its result had to be found again, by key, when its
//! result left the window, 65,536 commands later: a cold lookup in a map of millions, then
//! the result rewritten in place. Slots are numbered in the order results arrive and leave
//! the window in that same order, so the leaving result's summary simply goes next in line
//! and its receipt, unchanged, still names where to find it.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::Serialize;
use tally_protocol::{CommandResult, IdemKey, Status};

use super::chunked::Chunked;
use super::image::Summary;
use super::packed::Packed;
use super::prefetch::prefetch;

/// Evictions ahead that a leaving result's memory is asked for (see `ask_for_leaving`).
const AHEAD: usize = 8;

/// A remembered result that left the window: its summary, or the result itself if it has
/// none (only an applied command's result has a summary).
#[derive(Debug, Clone)]
pub(crate) enum Stored {
    Whole(Arc<CommandResult>),
    Summary(Packed<Summary>),
}

impl Stored {
    pub fn as_ref(&self) -> StoredRef<'_> {
        match self {
            Stored::Whole(result) => StoredRef::Whole(result),
            Stored::Summary(summary) => StoredRef::Summary(summary),
        }
    }
}

/// A remembered result, wherever it is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoredRef<'a> {
    Whole(&'a CommandResult),
    Summary(&'a Packed<Summary>),
}

impl StoredRef<'_> {
    /// The result a duplicate answers with: the first one whole, or what its summary holds.
    pub fn result(self, merchant: &str, key: &IdemKey) -> CommandResult {
        match self {
            StoredRef::Whole(result) => result.clone(),
            StoredRef::Summary(packed) => {
                let summary = packed.unpack();
                CommandResult {
                    merchant: merchant.to_string(),
                    key: key.text(),
                    command: summary.command,
                    status: Status::Applied(Box::new(summary.applied())),
                }
            }
        }
    }
}

/// The checkpoint's layout of a remembered result (`StoredImage`): whole results as their
/// JSON line, summaries as they are kept.
impl Serialize for StoredRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StoredRef::Whole(result) => serializer.serialize_newtype_variant(
                "StoredImage",
                0,
                "Whole",
                &result.to_json_line(),
            ),
            StoredRef::Summary(summary) => {
                serializer.serialize_newtype_variant("StoredImage", 1, "Summary", summary)
            }
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Results {
    /// Slots `0..left.len()`: results that left the window.
    left: Chunked<Stored>,
    /// The slots after those: the recent results, whole, oldest first.
    window: VecDeque<Arc<CommandResult>>,
}

impl Results {
    /// A window of `window` (oldest first) after the results that left it: the parts of a
    /// restored ledger. Slot `left.len() + i` is `window[i]`.
    pub fn restored(left: Chunked<Stored>, window: VecDeque<Arc<CommandResult>>) -> Results {
        Results { left, window }
    }

    /// Keeps `result` whole at the end of the window and returns its slot.
    pub fn push(&mut self, result: Arc<CommandResult>) -> u64 {
        let slot = (self.left.len() + self.window.len()) as u64;
        self.window.push_back(result);
        slot
    }

    /// The result in `slot`, which a receipt named.
    pub fn get(&self, slot: u64) -> StoredRef<'_> {
        let slot = usize::try_from(slot).expect("slots fit in memory");
        match slot.checked_sub(self.left.len()) {
            None => self.left[slot].as_ref(),
            Some(recent) => StoredRef::Whole(&self.window[recent]),
        }
    }

    /// Trades the oldest whole result for its summary if the window holds more than
    /// `kept_whole`, and gives back the whole result to be freed.
    pub fn evict_oldest(&mut self, kept_whole: usize) -> Option<Arc<CommandResult>> {
        if self.window.len() <= kept_whole {
            return None;
        }
        self.ask_for_leaving();
        let oldest = self.window.pop_front().expect("not empty");
        match &oldest.status {
            Status::Applied(applied) => {
                let summary = Summary::pack_of(oldest.command, applied);
                self.left.push(Stored::Summary(summary));
                Some(oldest)
            }
            _ => {
                self.left.push(Stored::Whole(oldest));
                None
            }
        }
    }

    /// A leaving result is 65,536 commands old and long out of every cache, and its summary
    /// reads it through two pointers: the result, then what it applied. Both are asked for
    /// ahead, the second once the first has had time to arrive.
    fn ask_for_leaving(&self) {
        if let Some(far) = self.window.get(2 * AHEAD) {
            prefetch(&**far, 2);
        }
        if let Some(near) = self.window.get(AHEAD) {
            if let Status::Applied(applied) = &near.status {
                prefetch(
                    &**applied,
                    std::mem::size_of::<tally_protocol::Applied>().div_ceil(64),
                );
            }
        }
    }

    /// Asks for the memory naming what `slot` keeps (see `ReceiptsPart`).
    pub fn ask_for_slot(&self, slot: u64) {
        if let Some(stored) = self.left.get(slot as usize) {
            prefetch(stored, 1);
        }
    }

    /// Asks for the summary in `slot`, once the memory naming it has arrived.
    pub fn ask_for_summary(&self, slot: u64) {
        if let Some(Stored::Summary(summary)) = self.left.get(slot as usize) {
            summary.ask_for_bytes();
        }
    }

    pub fn window_len(&self) -> usize {
        self.window.len()
    }

    /// Whether `slot` is in the window (its result is kept whole).
    pub fn in_window(&self, slot: u64) -> bool {
        slot >= self.left.len() as u64
    }

    /// The results that left the window.
    #[cfg(test)]
    pub fn left(&self) -> impl Iterator<Item = &Stored> {
        self.left.iter()
    }
}
