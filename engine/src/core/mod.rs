//! The deterministic core: `Ledger::apply(command, now)` is a function of the state, the
//! command and the engine's logged time `now`. No clock, no IO, no randomness inside.
//!
//! Every change to a wallet is a ledger `Entry` pushed to the journal (the outbox that the
//! runtime drains into its log); balances, entries and lots are checked against each other
//! after every command.

mod chunked;
pub(crate) mod encode;
mod holds;
mod image;
mod intern;
mod lend;
mod members;
mod micros;
mod packed;
mod parted;
mod phone;
mod placed;
mod prefetch;
mod promotions;
mod purchase;
mod receipt_key;
mod results;
mod returns;
mod seqs;
mod snapshot;
mod sorted_deque;
mod tiers;
mod time;

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

pub use chunked::Chunked;
use parted::PartedMap;
use placed::PlacedMap;
pub use receipt_key::ReceiptKey;
use results::Results;
use serde::{Deserialize, Serialize};
use tally_protocol::{
    Alias, Applied, BalanceQuery, Balances, Body, Command, CommandKind, CommandResult, EntryKind,
    EntryView, LotSlice, MemberView, Name, Origin, Reason, Status, TierChange, Wallet,
};

pub use image::{bounded_bincode, state_bincode, ImageError, LedgerImage, LedgerImageRef};
pub use member::{Counters, Lot, Lots, Member, Slice, Totals};
pub use phone::{normalize_phone, normalized_phone};
pub use promotions::scratch_codes;
pub use snapshot::{touched, SnapshotCursor, Touched, EXPIRING_WITHIN_DAYS};

use crate::money::from_minor;
use crate::program::{parse_and_compile, Program};
use crate::Timestamp;

mod member;

/// How far ahead of the engine clock a terminal's event time may be.
pub const MAX_FUTURE_SKEW_S: i64 = 300;
/// Bounds on one command, so that no input can make the core do unbounded work.
pub const MAX_LINES_PER_ORDER: usize = 500;
pub const MAX_CARDS_PER_COMMAND: u32 = 100_000;
pub const MAX_REWARDS_PER_ORDER: usize = 50;
pub const MAX_QTY_PER_LINE: i64 = 1_000_000;
/// No order amount may reach this many minor units: products with rates stay inside i128.
pub const ORDER_MINOR_MAX: i64 = 100_000_000_000;
/// The most points one rule may give one order, and one reward may cost: each bound on its
/// own (order size, rate, multiplier) lets their product overflow; this one keeps every sum
/// of them far inside the ledger's integers.
pub const MAX_POINTS: i64 = 1_000_000_000_000_000;
/// Results of this many recent commands per merchant are kept whole for duplicates; older
/// ones keep their summary (balances, totals, tier) so memory per command stays small.
pub const RESULTS_KEPT_WHOLE: usize = 65_536;

/// One immutable change of one wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its place in the ledger, counted over all merchants: statements fetch entries by it.
    pub seq: u64,
    pub merchant: Name,
    pub member: u64,
    pub wallet: Wallet,
    pub kind: EntryKind,
    /// Points, or credit in minor units; signed.
    pub amount: i64,
    pub at: Timestamp,
    /// The command that caused it.
    pub command: ReceiptKey,
    pub rule: Option<Name>,
    pub program_version: u32,
    pub lots: Lots,
}

/// What a statement page shows, before its entries are read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementPlan {
    pub member: u64,
    pub program_version: u32,
    pub minor_units: u32,
    pub total_entries: u64,
    /// Entry numbers, newest first.
    pub seqs: Vec<u64>,
}

/// A rejection: a stable reason and a sentence for the cashier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub message: String,
}

pub(crate) fn reject<T>(reason: Reason, message: impl Into<String>) -> Result<T, Rejection> {
    Err(Rejection {
        reason,
        message: message.into(),
    })
}

/// What a command left behind that later commands refer to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Record {
    None,
    Order(purchase::PackedOrder),
    Hold(Box<holds::HoldRecord>),
}

#[derive(Debug, Clone)]
pub(crate) struct Receipt {
    fingerprint: u128,
    /// Where the merchant's `results` keep this command's result.
    slot: u64,
    record: Record,
}

/// Everything of one merchant. Nothing here is reachable from another merchant.
#[derive(Debug)]
pub struct Merchant {
    pub name: Name,
    pub programs: Vec<Arc<Program>>,
    pub members: Chunked<Member>,
    aliases: PartedMap<Alias, u32>,
    /// Searched with the command's `IdemKey` (see `receipt_key`).
    receipts: PlacedMap<ReceiptKey, Receipt>,
    /// Members with time-driven work, by due time (lazily deleted: see `Member::timer_at`).
    /// A tree, not a heap: a heap is one vector, which doubles in one push (134 MB copied at
    /// 8.4 million members with timers); a tree grows a node at a time.
    timers: BTreeSet<(Timestamp, u32)>,
    birthdays: FxHashMap<(u32, u32), Vec<u32>>,
    /// Every remembered result: the recent ones whole, the others as summaries.
    results: Results,
    /// Time-driven work is done up to here.
    pub clock: Timestamp,
    next_day_start: Option<Timestamp>,
    next_month_start: Option<Timestamp>,
    next_card: u64,
    /// Per-member uses, punch cards, budgets, assignments and scratch codes.
    promotions: promotions::State,
    /// The names order records refer to by number.
    names: intern::NameTable,
}

impl Merchant {
    pub fn program(&self) -> &Arc<Program> {
        self.programs
            .last()
            .expect("a merchant always has a program")
    }

    pub fn member_by_alias(&self, alias: &Alias) -> Option<&Member> {
        self.aliases
            .get(alias)
            .map(|&index| &self.members[index as usize])
    }
}

/// The whole loyalty state of every merchant.
#[derive(Debug)]
pub struct Ledger {
    merchants: BTreeMap<String, Merchant>,
    journal: Vec<Entry>,
    /// The sequence number the next entry gets.
    next_entry_seq: u64,
    results_kept_whole: usize,
    /// Whole results that left the recent window (their receipts keep a summary now), for
    /// the caller to free off the apply path: they are cold by then, and freeing them took
    /// 5% of the apply path's time in a profile. At most `EVICTED_HELD_MAX`; past that they
    /// are freed here.
    evicted: Vec<Arc<CommandResult>>,
}

/// Evicted results held for the caller at most: more than a group's commands.
const EVICTED_HELD_MAX: usize = 16_384;

/// Commands warmed at a time, this many ahead of the one applied (`Ledger::warm_ahead`).
const WARM_AHEAD: usize = 4;

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger {
            merchants: BTreeMap::new(),
            journal: Vec::new(),
            next_entry_seq: 1,
            results_kept_whole: RESULTS_KEPT_WHOLE,
            evicted: Vec::new(),
        }
    }
}

/// What one command is applied with.
#[derive(Clone)]
pub(crate) struct Ctx<'a> {
    /// The merchant's name, for the entries the command writes.
    pub merchant: Name,
    pub key: ReceiptKey,
    /// Borrowed from the command: a copy was an allocation a command.
    pub origin: &'a Origin,
    pub at: Timestamp,
    pub now: Timestamp,
    pub program: Arc<Program>,
    /// The local months of `at` and `now`, worked out once: an order asks for them several
    /// times, and a time zone lookup costs more than the tier check that needs it.
    at_month: OnceCell<i32>,
    now_month: OnceCell<i32>,
    /// The local weekday and minute of `at`, which every rule with days or hours asks for.
    at_weekday_minute: OnceCell<(u32, u32)>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        merchant: Name,
        key: ReceiptKey,
        origin: &'a Origin,
        at: Timestamp,
        now: Timestamp,
        program: Arc<Program>,
    ) -> Ctx<'a> {
        Ctx {
            merchant,
            key,
            origin,
            at,
            now,
            program,
            at_month: OnceCell::new(),
            now_month: OnceCell::new(),
            at_weekday_minute: OnceCell::new(),
        }
    }

    /// The same command's context at another instant (a step of a tick).
    pub fn at_instant(&self, instant: Timestamp) -> Ctx<'a> {
        let (merchant, key, origin) = (self.merchant.clone(), self.key.clone(), self.origin);
        Ctx::new(
            merchant,
            key,
            origin,
            instant,
            instant,
            self.program.clone(),
        )
    }

    /// `time::month_index` of `at`.
    pub fn at_month(&self) -> i32 {
        *self
            .at_month
            .get_or_init(|| time::month_index(&self.program, self.at))
    }

    /// `time::local_weekday_minute` of `at`.
    pub fn at_weekday_minute(&self) -> (u32, u32) {
        *self
            .at_weekday_minute
            .get_or_init(|| time::local_weekday_minute(&self.program, self.at))
    }

    /// `time::month_index` of `now`.
    pub fn now_month(&self) -> i32 {
        *self
            .now_month
            .get_or_init(|| time::month_index(&self.program, self.now))
    }
}

/// Writes entries to the journal and keeps the members' running sums of them.
pub(crate) struct Books<'a> {
    journal: &'a mut Vec<Entry>,
    next_seq: &'a mut u64,
}

impl Books<'_> {
    #[allow(clippy::too_many_arguments)]
    pub fn post(
        &mut self,
        ctx: &Ctx,
        member: &mut Member,
        wallet: Wallet,
        kind: EntryKind,
        amount: i64,
        rule: Option<&Name>,
        lots: impl Into<Lots>,
    ) {
        if amount == 0 {
            return;
        }
        match wallet {
            Wallet::Points => member.entry_points += amount,
            Wallet::Credit => member.entry_credit_minor += amount,
        }
        let seq = *self.next_seq;
        *self.next_seq += 1;
        member.history.push(seq);
        self.journal.push(Entry {
            seq,
            merchant: ctx.merchant.clone(),
            member: member.id,
            wallet,
            kind,
            amount,
            at: ctx.now.max(ctx.at),
            command: ctx.key.clone(),
            rule: rule.cloned(),
            program_version: ctx.program.version,
            lots: lots.into(),
        });
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Installs a program outside any command (the offline tools' `--program`).
    pub fn install_program(
        &mut self,
        text: &str,
        now: Timestamp,
    ) -> Result<u32, crate::program::ProgramErrors> {
        let program = Arc::new(parse_and_compile(text)?);
        let version = program.version;
        match self.merchants.get_mut(&program.merchant) {
            Some(merchant) => members::switch_program(merchant, program),
            None => {
                let merchant = new_merchant(program, now);
                self.merchants.insert(merchant.name.to_string(), merchant);
            }
        }
        Ok(version)
    }

    /// How many recent results per merchant are kept whole (default `RESULTS_KEPT_WHOLE`):
    /// less memory, or, in tests, older results trimmed sooner.
    pub fn set_results_kept_whole(&mut self, count: usize) {
        self.results_kept_whole = count;
    }

    pub fn merchant(&self, name: &str) -> Option<&Merchant> {
        self.merchants.get(name)
    }

    pub fn merchants(&self) -> impl Iterator<Item = &Merchant> {
        self.merchants.values()
    }

    /// The entries written since the last call, in order.
    pub fn take_entries(&mut self) -> Vec<Entry> {
        std::mem::take(&mut self.journal)
    }

    /// The entries written since the last call, in order, in exchange for the buffer of an
    /// earlier call, which becomes the journal: its room is kept (growing a fresh one each
    /// group copied it, and its pages were new each time), and the entries still in it are
    /// dropped here, where their memory came from (when their names were `Arc`s, dropping
    /// them on the committer also made it contend for the names' counts).
    pub fn swap_entries(&mut self, given_back: Vec<Entry>) -> Vec<Entry> {
        let journal = crate::emptied(given_back, crate::GROUP_ITEMS_KEPT_MAX);
        std::mem::replace(&mut self.journal, journal)
    }

    /// Whole results that left the recent window since the last call, to be freed where it
    /// costs the apply path nothing (the committer's thread).
    pub fn take_evicted(&mut self) -> Vec<Arc<CommandResult>> {
        std::mem::take(&mut self.evicted)
    }

    /// `take_evicted`, with `empty` as the next buffer.
    pub fn swap_evicted(&mut self, empty: Vec<Arc<CommandResult>>) -> Vec<Arc<CommandResult>> {
        assert!(empty.is_empty(), "the evicted results start empty");
        std::mem::replace(&mut self.evicted, empty)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.journal
    }

    /// Which entries a `statement` query shows: the member's entry numbers on the page asked
    /// for, newest first, and how many entries the member has in all. The entries themselves
    /// are in the log.
    pub fn statement_plan(&self, command: &Command) -> Result<StatementPlan, Rejection> {
        let Body::Statement(query) = &command.body else {
            return reject(Reason::Invalid, "not a statement query");
        };
        if matches!(command.origin, Origin::Terminal(_)) {
            return reject(
                Reason::Unauthorized,
                "`statement` needs an operator (admin) identity",
            );
        }
        if query.per_page == 0 || query.per_page > tally_protocol::MAX_STATEMENT_PAGE {
            return reject(
                Reason::Invalid,
                format!(
                    "per_page must be 1..={}",
                    tally_protocol::MAX_STATEMENT_PAGE
                ),
            );
        }
        let Some(merchant) = self.merchants.get(&command.merchant) else {
            return reject(
                Reason::UnknownMerchant,
                format!("merchant {:?} has no loyalty program", command.merchant),
            );
        };
        let (members::Who::Existing(index) | members::Who::Activate(index)) =
            members::resolve(merchant, &query.member, false)?
        else {
            unreachable!("resolve without enrolment finds a member or rejects")
        };
        let history = &merchant.members[index as usize].history;
        let skip = u64::from(query.page) * u64::from(query.per_page);
        let seqs = history.newest(skip, query.per_page as usize);
        Ok(StatementPlan {
            member: merchant.members[index as usize].id,
            program_version: merchant.program().version,
            minor_units: merchant.program().minor_units,
            total_entries: history.len(),
            seqs,
        })
    }

    /// When the merchant next has time-driven work, if ever.
    /// The number of the last entry written (0: none yet).
    pub fn last_entry_seq(&self) -> u64 {
        self.next_entry_seq - 1
    }

    pub fn due_at(&self, merchant: &str) -> Option<Timestamp> {
        self.merchants.get(merchant).and_then(time::due_at)
    }

    /// Applies one command at engine time `now`.
    pub fn apply(&mut self, command: &Command, now: Timestamp) -> CommandResult {
        Arc::unwrap_or_clone(self.apply_shared(command, now))
    }

    /// Applies one command at engine time `now`; the result is shared with the receipt that
    /// answers duplicates, so it is not copied.
    pub fn apply_shared(&mut self, command: &Command, now: Timestamp) -> Arc<CommandResult> {
        self.apply_fingerprinted(command, now, Fingerprint::of(command))
    }

    /// `apply_shared` with the command's fingerprint worked out already, on a thread other
    /// than the one applying (a reader, a connection's task).
    pub fn apply_fingerprinted(
        &mut self,
        command: &Command,
        now: Timestamp,
        fingerprint: Fingerprint,
    ) -> Arc<CommandResult> {
        debug_assert_eq!(fingerprint, Fingerprint::of(command), "another command's");
        match self.apply_checked(command, now, fingerprint) {
            Ok(result) => result,
            Err(rejection) => Arc::new(CommandResult::rejected(
                &command.merchant,
                command.key.text(),
                command.kind(),
                rejection.reason,
                rejection.message,
            )),
        }
    }

    /// Applying a group, call before each command with how many were applied and the rest
    /// (the next command first): every `WARM_AHEAD` commands, warms the `WARM_AHEAD` after
    /// the next ones (`warm`).
    pub fn warm_ahead<'a>(&self, applied: usize, rest: impl Iterator<Item = &'a Command>) {
        if applied.is_multiple_of(WARM_AHEAD) {
            let ahead = rest.skip(WARM_AHEAD).take(WARM_AHEAD);
            ahead.for_each(|command| self.warm(command));
        }
    }

    /// Asks for what applying `command` reads first (its member, the table its receipt
    /// would be in), changing nothing and waiting for nothing it can avoid. Warmed a few at
    /// a time, the next commands' cache misses overlap, where applying them one by one takes
    /// each miss in turn.
    fn warm(&self, command: &Command) {
        let Some(merchant) = self.merchants.get(&*command.merchant) else {
            return;
        };
        std::hint::black_box(merchant.receipts.get(&command.key).is_some());
        let member = match &command.body {
            Body::Purchase(order) | Body::Quote(order) => &order.member,
            Body::Hold(hold) => &hold.member,
            Body::Adjust(adjust) => &adjust.member,
            Body::Event(event) => &event.member,
            _ => return,
        };
        members::warm(merchant, member);
    }

    /// Forgets the entries written and the whole results evicted so far: offline tools have
    /// no log to write the ones to, nor a thread to free the others on.
    pub fn clear_outbox(&mut self) {
        self.journal.clear();
        self.evicted.clear();
    }

    fn apply_checked(
        &mut self,
        command: &Command,
        now: Timestamp,
        fingerprint: Fingerprint,
    ) -> Result<Arc<CommandResult>, Rejection> {
        let kind = command.kind();
        if kind.admin_only() && matches!(command.origin, Origin::Terminal(_)) {
            return reject(
                Reason::Unauthorized,
                format!("`{}` needs an operator (admin) identity", kind.name()),
            );
        }
        if let Body::Tick(_) = command.body {
            if command.origin != Origin::Admin(tally_protocol::ENGINE_ADMIN.into()) {
                return reject(Reason::Unauthorized, "only the engine issues `tick`");
            }
        }
        if !self.merchants.contains_key(&command.merchant) {
            return match &command.body {
                Body::LoadProgram(load) => {
                    self.create_merchant(command, &load.program, now, fingerprint)
                }
                _ => reject(
                    Reason::UnknownMerchant,
                    format!("merchant {:?} has no loyalty program", command.merchant),
                ),
            };
        }
        let remembered = remembered(kind);
        let fingerprint = fingerprint.0;
        let merchant = self
            .merchants
            .get_mut(&command.merchant)
            .expect("checked above");
        if remembered {
            if let Some(receipt) = merchant.receipts.get(&command.key) {
                if receipt.fingerprint != fingerprint {
                    return reject(
                        Reason::Conflict,
                        format!(
                            "transaction {} was already used for a different request",
                            command.key
                        ),
                    );
                }
                let stored = merchant.results.get(receipt.slot);
                let first = Box::new(stored.result(&command.merchant, &command.key));
                return Ok(Arc::new(CommandResult {
                    merchant: command.merchant.clone(),
                    key: command.key.text(),
                    command: kind,
                    status: Status::Duplicate { first },
                }));
            }
        }
        check_version(merchant, command.program_version)?;
        check_time(merchant.program(), command, now)?;
        let ctx = Ctx::new(
            merchant.name.clone(),
            ReceiptKey::from(&command.key),
            &command.origin,
            command.at,
            now,
            merchant.program().clone(),
        );
        let mut books = Books {
            journal: &mut self.journal,
            next_seq: &mut self.next_entry_seq,
        };
        let first_entry = books.journal.len();
        let (mut applied, record) = dispatch(merchant, &mut books, &ctx, &command.body)?;
        if kind != CommandKind::Tick {
            applied.entries = self.journal[first_entry..]
                .iter()
                .map(|e| entry_view(e, ctx.program.minor_units))
                .collect();
        }
        let result = Arc::new(CommandResult {
            merchant: command.merchant.clone(),
            key: command.key.text(),
            command: kind,
            status: Status::Applied(Box::new(applied)),
        });
        if remembered {
            let kept_whole = self.results_kept_whole;
            let merchant = self
                .merchants
                .get_mut(&command.merchant)
                .expect("checked above");
            let evicted = remember(merchant, ctx.key, fingerprint, record, &result, kept_whole);
            self.hold_evicted(evicted);
        }
        Ok(result)
    }

    fn create_merchant(
        &mut self,
        command: &Command,
        text: &str,
        now: Timestamp,
        fingerprint: Fingerprint,
    ) -> Result<Arc<CommandResult>, Rejection> {
        let program = members::compile_for(&command.merchant, text, None)?;
        let version = program.version;
        let mut merchant = new_merchant(Arc::new(program), now);
        let applied = Applied {
            program_version: version,
            ..Applied::default()
        };
        let result = Arc::new(CommandResult {
            merchant: command.merchant.clone(),
            key: command.key.text(),
            command: CommandKind::LoadProgram,
            status: Status::Applied(Box::new(applied)),
        });
        let evicted = remember(
            &mut merchant,
            ReceiptKey::from(&command.key),
            fingerprint.0,
            Record::None,
            &result,
            self.results_kept_whole,
        );
        self.hold_evicted(evicted);
        self.merchants.insert(command.merchant.clone(), merchant);
        Ok(result)
    }

    /// Full conservation check of every member (balance = entries = lots).
    pub fn verify(&self) {
        for merchant in self.merchants.values() {
            for member in &merchant.members {
                member.assert_conserved(true);
            }
        }
    }

    /// A digest of the whole state, equal for equal states (for replay and recovery checks).
    pub fn digest(&self) -> u128 {
        use std::hash::Hash;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (name, merchant) in &self.merchants {
            name.hash(&mut hasher);
            self.next_entry_seq.hash(&mut hasher);
            merchant.program().version.hash(&mut hasher);
            merchant.clock.hash(&mut hasher);
            merchant.members.hash(&mut hasher);
            receipts_digest(&merchant.receipts).hash(&mut hasher);
            merchant.promotions.digest_into(&mut hasher);
        }
        hasher.digest128()
    }
}

/// The remembered keys, whatever the map's order: a sum of per-key digests (no sort of
/// millions of keys when recovery checks the state).
fn receipts_digest(receipts: &PlacedMap<ReceiptKey, Receipt>) -> (usize, u128) {
    use std::hash::Hash;
    let sum = receipts.keys().fold(0u128, |sum, key| {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        key.hash(&mut hasher);
        sum.wrapping_add(hasher.digest128())
    });
    (receipts.len(), sum)
}

impl Ledger {
    /// Keeps evicted results for the caller to free (up to `EVICTED_HELD_MAX`).
    fn hold_evicted(&mut self, evicted: [Option<Arc<CommandResult>>; 2]) {
        for result in evicted.into_iter().flatten() {
            if self.evicted.len() < EVICTED_HELD_MAX {
                self.evicted.push(result);
            }
        }
    }
}

/// Keeps the receipt and the result; the oldest whole result past the window becomes a
/// summary, and the whole one is returned for the caller to free. A window larger than
/// `kept_whole` (a checkpoint written with a larger one) shrinks by one result a command.
#[must_use = "an evicted result is freed by the caller, off the apply path"]
fn remember(
    merchant: &mut Merchant,
    key: ReceiptKey,
    fingerprint: u128,
    record: Record,
    result: &Arc<CommandResult>,
    kept_whole: usize,
) -> [Option<Arc<CommandResult>>; 2] {
    let slot = merchant.results.push(result.clone());
    let receipt = Receipt {
        fingerprint,
        slot,
        record,
    };
    merchant.receipts.insert(key, receipt);
    [
        merchant.results.evict_oldest(kept_whole),
        merchant.results.evict_oldest(kept_whole),
    ]
}

fn new_merchant(program: Arc<Program>, now: Timestamp) -> Merchant {
    let mut merchant = Merchant {
        name: Name::new(&program.merchant),
        programs: vec![program],
        members: Chunked::default(),
        aliases: PartedMap::default(),
        receipts: PlacedMap::default(),
        timers: BTreeSet::new(),
        birthdays: FxHashMap::default(),
        results: Results::default(),
        clock: now,
        next_day_start: None,
        next_month_start: None,
        next_card: 1,
        promotions: promotions::State::default(),
        names: intern::NameTable::default(),
    };
    time::schedule_boundaries(&mut merchant);
    merchant
}

/// Queries change nothing and ticks are idempotent by nature: none is remembered.
fn remembered(kind: CommandKind) -> bool {
    !matches!(
        kind,
        CommandKind::Quote
            | CommandKind::Tick
            | CommandKind::Statement
            | CommandKind::Balance
            | CommandKind::Snapshot
    )
}

/// What a remembered command's receipt keeps of its content (zero for a command that is not
/// remembered). A function of the command alone, so the engine's readers and connection
/// tasks work it out before the command reaches the one thread that applies it: hashing a
/// demo purchase is about 8% of the instructions of applying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u128);

impl Fingerprint {
    pub fn of(command: &Command) -> Fingerprint {
        match remembered(command.kind()) {
            true => Fingerprint(fingerprint(command)),
            false => Fingerprint(0),
        }
    }
}

/// A 128-bit digest of a command's content: the same key with another digest is a conflict.
/// It is XXH3-128 of the bytes the command's `Hash` writes, hashed in one pass: streaming a
/// command's many small writes into the hasher gives the same digest for a fifth more work.
fn fingerprint(command: &Command) -> u128 {
    use std::hash::Hash;
    thread_local! {
        static BYTES: std::cell::RefCell<HashBytes> = const {
            std::cell::RefCell::new(HashBytes(Vec::new()))
        };
    }
    BYTES.with_borrow_mut(|bytes| {
        bytes.0.clear();
        command.hash(bytes);
        xxhash_rust::xxh3::xxh3_128(&bytes.0)
    })
}

/// The bytes a value's `Hash` writes, collected.
struct HashBytes(Vec<u8>);

// The fixed-size writes are spelled out so that each copies a constant number of bytes in
// line instead of calling `memcpy` for a few bytes; the bytes are the defaults' own.
#[allow(
    clippy::host_endian_bytes,
    reason = "the bytes `Hasher`'s default methods write, which digests kept in checkpoints came from"
)]
impl std::hash::Hasher for HashBytes {
    fn write(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn write_u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn write_u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }

    fn write_u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }

    fn write_i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }

    fn write_usize(&mut self, value: usize) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }

    fn write_isize(&mut self, value: isize) {
        self.0.extend_from_slice(&value.to_ne_bytes());
    }

    fn finish(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.0)
    }
}

fn check_version(merchant: &Merchant, expected: Option<u32>) -> Result<(), Rejection> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let current = merchant.program().version;
    if expected == current {
        Ok(())
    } else if merchant.programs.iter().any(|p| p.version == expected) {
        reject(
            Reason::ProgramSuperseded,
            format!("program version {expected} was replaced by version {current}"),
        )
    } else {
        reject(
            Reason::UnknownProgramVersion,
            format!("program version {expected} does not exist (current is {current})"),
        )
    }
}

fn check_time(program: &Program, command: &Command, now: Timestamp) -> Result<(), Rejection> {
    if command.kind() == CommandKind::Tick {
        // A tick moves the merchant's clock to its time; ahead of the engine's, the engine's
        // own next tick would find the clock past it.
        if command.at > now {
            return reject(
                Reason::Invalid,
                format!(
                    "a tick at {} is ahead of the engine clock {now}",
                    command.at
                ),
            );
        }
        return Ok(());
    }
    if command.at > now + chrono::TimeDelta::seconds(MAX_FUTURE_SKEW_S) {
        return reject(
            Reason::Invalid,
            format!(
                "event time {} is ahead of the engine clock {now}",
                command.at
            ),
        );
    }
    let stale = command.at < now - program.late_event;
    if stale && matches!(command.origin, Origin::Terminal(_)) {
        return reject(
            Reason::StaleEvent,
            format!(
                "event time {} is more than {} days old",
                command.at,
                program.late_event.num_days()
            ),
        );
    }
    Ok(())
}

fn dispatch(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    body: &Body,
) -> Result<(Applied, Record), Rejection> {
    let none = |applied: Applied| (applied, Record::None);
    match body {
        Body::Purchase(order) => purchase::purchase(merchant, books, ctx, order),
        Body::Quote(order) => purchase::quote(merchant, ctx, order).map(none),
        Body::Return(ret) => returns::apply_return(merchant, books, ctx, ret).map(none),
        Body::Hold(hold) => holds::hold(merchant, books, ctx, hold),
        Body::Capture(capture) => holds::capture(merchant, books, ctx, capture).map(none),
        Body::Release(release) => holds::release(merchant, books, ctx, release).map(none),
        Body::Adjust(adjust) => members::adjust(merchant, books, ctx, adjust).map(none),
        Body::Event(event) => members::event(merchant, books, ctx, event).map(none),
        Body::Enroll(enroll) => members::enroll(merchant, books, ctx, enroll).map(none),
        Body::IssueCards(issue) => members::issue_cards(merchant, ctx, issue).map(none),
        Body::Link(link) => members::link(merchant, ctx, link).map(none),
        Body::LoadProgram(load) => members::load_program(merchant, ctx, &load.program).map(none),
        Body::Tick(_) => time::tick(merchant, books, ctx).map(none),
        Body::Statement(_) => reject(
            Reason::Invalid,
            "statements are answered by the durable engine, which keeps the entries",
        ),
        Body::AssignPromotion(assign) => promotions::assign(merchant, ctx, assign).map(none),
        Body::IssueCodes(issue) => promotions::issue_codes(merchant, ctx, issue).map(none),
        Body::Tag(tag) => promotions::tag(merchant, ctx, tag).map(none),
        Body::Balance(query) => balance(merchant, ctx, query).map(none),
        Body::Snapshot(_) => reject(
            Reason::Invalid,
            "snapshots are streamed by the engine's server to an operator",
        ),
    }
}

/// A member's balances and current tier (`tier.before` = `tier.after`); changes nothing.
fn balance(merchant: &Merchant, ctx: &Ctx, query: &BalanceQuery) -> Result<Applied, Rejection> {
    let (members::Who::Existing(index) | members::Who::Activate(index)) =
        members::resolve(merchant, &query.member, false)?
    else {
        unreachable!("resolve without enrolment finds a member or rejects")
    };
    let member = &merchant.members[index as usize];
    let program = &ctx.program;
    let tier = program.tier_id(member.tier);
    Ok(Applied {
        program_version: program.version,
        member: Some(MemberView {
            id: u64::from(index) + 1,
            enrolled: false,
        }),
        balances: Some(balances(member, program.minor_units)),
        tier: Some(TierChange {
            before: tier.clone(),
            after: tier,
        }),
        ..Applied::default()
    })
}

pub(crate) fn entry_view(entry: &Entry, minor_units: u32) -> EntryView {
    let amount = match entry.wallet {
        Wallet::Points => Decimal::from(entry.amount),
        Wallet::Credit => from_minor(entry.amount, minor_units),
    };
    EntryView {
        wallet: entry.wallet,
        kind: entry.kind,
        amount,
        rule: entry.rule.clone(),
        lots: entry
            .lots
            .iter()
            .map(|s| LotSlice {
                lot: s.lot,
                points: s.points,
            })
            .collect(),
    }
}

pub(crate) fn balances(member: &Member, minor_units: u32) -> Balances {
    Balances {
        points: member.points,
        available: member.available_points(),
        pending: member.pending_points,
        held: member.held_points,
        credit: from_minor(member.credit_minor, minor_units),
        credit_held: from_minor(member.held_credit_minor, minor_units),
    }
}

/// The common tail of a command that touched one member: its view, balances, tier change,
/// timers and the conservation check.
pub(crate) fn finish_member(
    merchant: &mut Merchant,
    ctx: &Ctx,
    index: u32,
    enrolled: bool,
    tier_before: Option<usize>,
    applied: &mut Applied,
) {
    time::register_timer(merchant, index);
    let member = &merchant.members[index as usize];
    member.assert_conserved(false);
    let program = &ctx.program;
    applied.program_version = program.version;
    applied.member = Some(MemberView {
        id: member.id,
        enrolled,
    });
    applied.balances = Some(balances(member, program.minor_units));
    applied.tier = Some(TierChange {
        before: program.tier_id(tier_before),
        after: program.tier_id(member.tier),
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::results::Stored;
    use super::*;
    use crate::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

    /// A ledger that applied `commands` demo commands on `members` members, its outbox
    /// (entries, evicted results) left as the commands filled it.
    pub(crate) fn demo_ledger(members: u64, commands: usize, kept_whole: usize) -> Ledger {
        let mut ledger = Ledger::new();
        ledger.set_results_kept_whole(kept_whole);
        let workload = Workload::new(WorkloadConfig::demo(members));
        for (index, command) in workload.take(commands).enumerate() {
            if index == 0 {
                ledger.install_program(DEMO_PROGRAM, command.at).unwrap();
            }
            ledger.apply_shared(&command, command.at);
        }
        ledger
    }

    /// Applies `count` demo commands on `members` members to a new ledger, handing each
    /// result to `each` with the command and the ledger.
    pub(crate) fn each_demo_result(
        members: u64,
        count: usize,
        mut each: impl FnMut(&mut Ledger, &Command, Arc<CommandResult>),
    ) {
        let mut ledger = Ledger::new();
        let workload = Workload::new(WorkloadConfig::demo(members));
        for (index, command) in workload.take(count).enumerate() {
            if index == 0 {
                ledger.install_program(DEMO_PROGRAM, command.at).unwrap();
            }
            let result = ledger.apply_shared(&command, command.at);
            each(&mut ledger, &command, result);
        }
    }

    /// A tick in an input file (scenarios use them to move time) runs at most up to the
    /// engine's clock: ahead of it, the engine's own next tick would be refused.
    #[test]
    fn a_tick_ahead_of_the_engine_clock_is_refused_and_the_engines_own_still_runs() {
        let start: Timestamp = "2026-03-01T00:00:00Z".parse().unwrap();
        let mut ledger = Ledger::new();
        ledger.install_program(DEMO_PROGRAM, start).unwrap();
        let merchant = &*ledger.merchants().next().unwrap().name.clone();
        let far = crate::replay::tick_command(merchant, "2099-01-01T00:00:00Z".parse().unwrap());
        let refused = ledger.apply_shared(&far, start);
        assert!(
            matches!(&refused.status, Status::Rejected { reason: Reason::Invalid, message }
                if message.contains("ahead of the engine clock")),
            "{refused:?}"
        );
        let later = start + chrono::TimeDelta::days(40);
        let own = ledger.apply_shared(&crate::replay::tick_command(merchant, later), later);
        assert!(own.applied().is_some(), "{own:?}");
    }

    #[test]
    fn fingerprints_are_the_streamed_xxh3_digests_checkpoints_keep() {
        use std::hash::Hash;
        let commands: Vec<Command> = Workload::new(WorkloadConfig::demo(50)).take(2000).collect();
        assert!(commands.iter().any(|c| c.kind() != CommandKind::Purchase));
        for command in &commands {
            let mut streamed = xxhash_rust::xxh3::Xxh3::new();
            command.hash(&mut streamed);
            assert_eq!(fingerprint(command), streamed.digest128(), "{command:?}");
        }
    }

    /// A ledger restored with a smaller window (a checkpoint of an engine that kept more)
    /// comes down to it, one result a command, and stays there.
    #[test]
    fn a_window_larger_than_kept_shrinks_to_it() {
        let mut ledger = Ledger::new();
        ledger.set_results_kept_whole(300);
        let mut workload = Workload::new(WorkloadConfig::demo(40));
        for (index, command) in workload.by_ref().take(400).enumerate() {
            if index == 0 {
                ledger.install_program(DEMO_PROGRAM, command.at).unwrap();
            }
            ledger.apply_shared(&command, command.at);
        }
        let window = |ledger: &Ledger| ledger.merchants().next().unwrap().results.window_len();
        assert_eq!(window(&ledger), 300);
        ledger.set_results_kept_whole(100);
        let mut sizes = Vec::new();
        for command in workload.take(400) {
            ledger.apply_shared(&command, command.at);
            sizes.push(window(&ledger));
        }
        assert!(sizes.windows(2).all(|w| w[1] <= w[0]), "never grows");
        assert_eq!(sizes.last(), Some(&100));
        let first_at_100 = sizes.iter().position(|&n| n == 100).unwrap();
        assert!(first_at_100 >= 199, "one a command: {first_at_100}");
    }

    /// Results are written as JSON by hand for speed: on demo traffic (every kind of command
    /// it makes, promotions, tiers, returns, duplicates) the bytes are serde's.
    #[test]
    fn demo_results_are_written_as_serde_writes_them() {
        let mut kinds = std::collections::BTreeSet::new();
        let mut rejected = 0;
        each_demo_result(60, 3000, |_, _, result| {
            assert_eq!(
                result.to_json_line(),
                serde_json::to_string(&*result).unwrap()
            );
            kinds.insert(result.command);
            rejected += usize::from(result.reason().is_some());
        });
        assert!(
            kinds.len() >= 6 && rejected > 0,
            "{kinds:?}, {rejected} rejected"
        );
    }

    #[test]
    fn whole_results_leaving_the_window_go_to_the_caller_to_free() {
        let mut ledger = demo_ledger(40, 300, 20);
        let summaries = ledger
            .merchants()
            .flat_map(|merchant| merchant.results.left())
            .filter(|stored| matches!(stored, Stored::Summary(_)))
            .count();
        assert!(summaries > 200, "{summaries}");
        assert_eq!(ledger.take_evicted().len(), summaries);
    }
}
