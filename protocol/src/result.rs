use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::command::CommandKind;
use crate::names::Name;
use crate::reason::Reason;

/// The answer to one command.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct CommandResult {
    pub merchant: String,
    /// The idempotency key, as `terminal/txn`, `admin:name/txn` or 32 hex digits.
    pub key: String,
    pub command: CommandKind,
    #[serde(flatten)]
    pub status: Status,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(tag = "status", rename_all = "snake_case")]
// A duplicate holds the first result: the bounds are spelled out so the derive does not recurse.
#[rkyv(serialize_bounds(
    __S: rkyv::ser::Writer + rkyv::ser::Allocator + rkyv::ser::Sharing,
    __S::Error: rkyv::rancor::Source,
))]
#[rkyv(deserialize_bounds(__D: rkyv::de::Pooling, __D::Error: rkyv::rancor::Source))]
#[rkyv(bytecheck(bounds(
    __C: rkyv::validation::ArchiveContext + rkyv::validation::SharedContext,
    __C::Error: rkyv::rancor::Source,
)))]
pub enum Status {
    Applied(Box<Applied>),
    /// The key was seen before with the same content: the first result, unchanged.
    Duplicate {
        #[rkyv(omit_bounds)]
        first: Box<CommandResult>,
    },
    /// Nothing changed.
    Rejected {
        reason: Reason,
        message: String,
    },
}

impl CommandResult {
    pub fn rejected(
        merchant: &str,
        key: String,
        command: CommandKind,
        reason: Reason,
        message: String,
    ) -> Self {
        CommandResult {
            merchant: merchant.to_string(),
            key,
            command,
            status: Status::Rejected { reason, message },
        }
    }

    pub fn applied(&self) -> Option<&Applied> {
        match &self.status {
            Status::Applied(applied) => Some(applied),
            _ => None,
        }
    }

    pub fn reason(&self) -> Option<Reason> {
        match &self.status {
            Status::Rejected { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    pub fn to_json_line(&self) -> String {
        let mut line = Vec::with_capacity(1024);
        self.write_json(&mut line);
        String::from_utf8(line).expect("JSON is UTF-8")
    }

    /// Appends the result's JSON line (without the newline) to `out`: writers of many
    /// results reuse one buffer instead of a string each. The bytes are those of the derived
    /// `Serialize`, written by hand (`result_json.rs`).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        crate::result_json::write_result(out, self);
    }
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Wallet {
    Points,
    Credit,
}

impl Wallet {
    /// The name JSON gives it.
    pub fn name(self) -> &'static str {
        match self {
            Wallet::Points => "points",
            Wallet::Credit => "credit",
        }
    }
}

/// The kind of a ledger entry (SPEC section 1).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    PartialOrd,
    Ord,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    Accrual,
    Redemption,
    Reversal,
    Expiry,
    Adjustment,
    Bonus,
    Hold,
    Release,
    Cashback,
}

impl EntryKind {
    /// The name JSON gives it.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Accrual => "accrual",
            EntryKind::Redemption => "redemption",
            EntryKind::Reversal => "reversal",
            EntryKind::Expiry => "expiry",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Bonus => "bonus",
            EntryKind::Hold => "hold",
            EntryKind::Release => "release",
            EntryKind::Cashback => "cashback",
        }
    }
}

/// What an applied command did. Fields that do not apply to a command are left out of JSON.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Applied {
    pub program_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberView>,
    /// Points earned by this command (accruals and bonuses, after rounding).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub points_earned: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub points_redeemed: i64,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub credit_redeemed: Decimal,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub cashback: Decimal,
    /// Points and cashback per earning rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleEarning>,
    /// Points and cashback per order line (what a return reverses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<LineEarning>,
    /// Catalog rewards redeemed and the discount each gave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discounts: Vec<Discount>,
    /// What a return could not take back and wrote off (`negative_balance = "clamp"`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub points_written_off: i64,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub credit_written_off: Decimal,
    /// Every ledger entry this command wrote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<EntryView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balances: Option<Balances>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<TierChange>,
    /// Card numbers created by `issue_cards`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cards: Vec<String>,
    /// For `tick`: how much time-driven work was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<TickSummary>,
    /// For `statement`: one page of the member's entries, newest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<StatementPage>,
    /// Promotions applied to an order, in program order; on a return, what was taken back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotions: Vec<PromotionApplied>,
    /// Promotions considered for an order but not applied, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub promotions_not_applied: Vec<PromotionNotApplied>,
    /// Progress of every punch card the order (or return) touched or considered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub punch_cards: Vec<PunchCard>,
    /// Codes created by `issue_codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
}

fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// One promotion applied to an order (negative amounts on a return: what was taken back).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PromotionApplied {
    pub promotion: Name,
    /// The case that applied, counted from 0 in file order; absent for a punch card's reward
    /// alone and on a return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case: Option<u32>,
    /// The code presented for it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Money taken off each line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<PromotionLine>,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub shipping: Decimal,
    /// Total money taken off the order (lines and shipping).
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub discount: Decimal,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub points: i64,
    /// Items handed over outside the order (on a return: to be handed back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gifts: Vec<Name>,
    /// A punch given (1) or taken back (-1).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub punch: i64,
    /// On a return of the whole order: the single-use code is usable again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub code_returned: bool,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PromotionLine {
    /// The order line, counted from 1.
    pub line: u32,
    pub sku: Name,
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub amount: Decimal,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PromotionNotApplied {
    pub promotion: Name,
    pub reason: Reason,
    /// For `condition_not_met`: the first condition that failed (`min_total`, `contains`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct PunchCard {
    pub promotion: Name,
    /// Holes punched on the current card after this command.
    pub punches: u32,
    /// Holes that fill a card.
    pub of: u32,
    /// This command filled a card: its reward was given and a new card started.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub completed: bool,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct MemberView {
    pub id: u64,
    /// True when this command created (or first activated) the member.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enrolled: bool,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct RuleEarning {
    pub rule: Name,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub points: i64,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub cashback: Decimal,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct LineEarning {
    pub sku: Name,
    /// The amount points were earned on: line amount less discounts and its share of what
    /// was paid with points or credit.
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub eligible: Decimal,
    pub points: i64,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub cashback: Decimal,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Discount {
    pub reward: String,
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub amount: Decimal,
    pub points: i64,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct LotSlice {
    pub lot: u32,
    pub points: i64,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct EntryView {
    pub wallet: Wallet,
    pub kind: EntryKind,
    /// Signed: points are whole numbers, credit is money.
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Name>,
    /// Almost always one lot: kept inline, without an allocation.
    #[serde(default, skip_serializing_if = "SmallVec::is_empty")]
    pub lots: SmallVec<[LotSlice; 1]>,
}

/// A member's balances after the command.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct Balances {
    /// Sum of all points entries (= live lots); may be negative after a return.
    pub points: i64,
    /// Spendable now: not pending, not held.
    pub available: i64,
    pub pending: i64,
    /// Reserved by open holds (already taken out of `points`).
    pub held: i64,
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub credit: Decimal,
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub credit_held: Decimal,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TierChange {
    pub before: Option<Name>,
    pub after: Option<Name>,
}

#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct TickSummary {
    pub members: u64,
    pub points_expired: i64,
    pub points_released: i64,
    pub holds_lapsed: u64,
    pub birthday_bonuses: u64,
    pub tier_changes: u64,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct StatementPage {
    pub page: u32,
    pub per_page: u32,
    /// All the member's entries, on every page.
    pub total_entries: u64,
    pub entries: Vec<StatementEntry>,
}

/// A ledger entry as a statement shows it.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct StatementEntry {
    /// The entry's place in the merchant's ledger: later entries have higher numbers.
    pub seq: u64,
    #[rkyv(with = crate::wire::AsMicros)]
    pub at: crate::Timestamp,
    /// The key of the command that wrote it.
    pub command: String,
    pub wallet: Wallet,
    pub kind: EntryKind,
    #[serde(serialize_with = "crate::decimal_text::serialize")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<Name>,
    pub program_version: u32,
    #[serde(default, skip_serializing_if = "SmallVec::is_empty")]
    pub lots: SmallVec<[LotSlice; 1]>,
}

impl Applied {
    /// A copy without the detail lists (rules, lines, discounts, entries, cards, codes and the
    /// promotion lists).
    pub fn clone_summary(&self) -> Applied {
        Applied {
            program_version: self.program_version,
            member: self.member.clone(),
            points_earned: self.points_earned,
            points_redeemed: self.points_redeemed,
            credit_redeemed: self.credit_redeemed,
            cashback: self.cashback,
            points_written_off: self.points_written_off,
            credit_written_off: self.credit_written_off,
            balances: self.balances.clone(),
            tier: self.tier.clone(),
            tick: self.tick.clone(),
            ..Applied::default()
        }
    }
}
