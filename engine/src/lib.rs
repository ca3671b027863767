//! The tally engine: the deterministic loyalty state machine (`core`), the program compiler
//! (`program`), the offline tools built on them (`replay`) and synthetic traffic (`workload`).

pub mod core;
pub mod money;
pub mod program;

pub use tally_protocol::Timestamp;
pub mod allocator;
mod background;
pub mod checkpoint;
mod commit;
pub mod history;
pub mod ingest;
pub mod lines;
pub mod log;
pub mod replay;
pub mod report;
pub mod server;
pub mod shards;
pub mod snapshot;
pub mod snapshot_stream;
pub mod workload;

/// The most items a buffer that goes back and forth between the engine and the committer
/// (a group's records, entries, evicted results) keeps room for: a larger one (a tick
/// expiring a whole merchant's lots) is dropped rather than given back.
pub(crate) const GROUP_ITEMS_KEPT_MAX: usize = 1 << 16;

/// `buffer` emptied, with its room kept for reuse unless it grew past `kept_max` items: one
/// unusual burst does not hold its memory for good.
pub(crate) fn emptied<T>(mut buffer: Vec<T>, kept_max: usize) -> Vec<T> {
    buffer.clear();
    match buffer.capacity() > kept_max {
        true => Vec::new(),
        false => buffer,
    }
}
