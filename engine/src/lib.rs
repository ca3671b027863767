//! The tally engine: the deterministic loyalty state machine (`core`), the program compiler
//! (`program`), the offline tools built on them (`replay`) and synthetic traffic (`workload`).

pub mod core;
pub mod money;
pub mod program;

pub use tally_protocol::Timestamp;
pub mod checkpoint;
mod commit;
pub mod history;
pub mod ingest;
pub mod log;
pub mod replay;
pub mod report;
pub mod server;
pub mod shards;
pub mod snapshot;
pub mod snapshot_stream;
pub mod workload;
