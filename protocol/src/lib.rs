//! tally's vocabulary: the commands a terminal or an operator sends, the results the engine
//! gives back, and the stable reason codes of a rejection.
//!
//! This crate knows nothing of the network or of storage. Its JSON form (one command per line)
//! is what command files, imports and tests use; `docs/commands.md` documents it. Its binary
//! form (`wire`: versioned frames of rkyv archives) is what travels between terminals and the
//! engine; `docs/protocol.md` documents it.

mod at;
mod command;
mod decimal_text;
mod json;
mod json_writer;
mod names;
mod reason;
mod result;
mod result_json;
mod snapshot;
pub mod wire;

pub use command::{
    Adjust, AdjustReason, Alias, AssignPromotion, BalanceQuery, Body, Capture, Command,
    CommandKind, Enroll, Event, Hold, IdemKey, IssueCards, IssueCodes, Line, Link, LoadProgram,
    MemberRef, Origin, Payment, Purchase, Release, Return, ReturnLine, SnapshotQuery,
    StatementQuery, Tag, Tick, TxnRef, ENGINE_ADMIN, MAX_STATEMENT_PAGE,
};
pub use json::{parse_command_line, ParseError};
pub use names::Name;
pub use reason::Reason;
pub use result::{
    Applied, Balances, CommandResult, Discount, EntryKind, EntryView, LineEarning, LotSlice,
    MemberView, PromotionApplied, PromotionLine, PromotionNotApplied, PunchCard, RuleEarning,
    StatementEntry, StatementPage, Status, TickSummary, TierChange, Wallet,
};
pub use snapshot::{RowBlock, RowNumbers, RowRef, SnapshotRow, SnapshotRows};

/// Money as it crosses the boundary: an exact decimal in the merchant's currency.
pub use rust_decimal::Decimal;
/// Every time tally handles is an instant in UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
