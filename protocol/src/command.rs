use std::hash::{Hash, Hasher};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::names::Name;
use crate::Timestamp;

/// The admin identity under which the engine issues its own time-driven commands.
pub const ENGINE_ADMIN: &str = "engine";

/// One command for the engine: who sends it, its idempotency key, the event time of the
/// order and what it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Command {
    pub merchant: String,
    pub origin: Origin,
    pub key: IdemKey,
    /// When the order happened (event time). Rules with calendar filters read it.
    #[rkyv(with = crate::wire::AsMicros)]
    pub at: Timestamp,
    /// The program version the sender expects, if it names one.
    pub program_version: Option<u32>,
    pub body: Body,
}

/// Who sent a command: a terminal (point of sale) or an operator.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum Origin {
    Terminal(String),
    Admin(String),
}

/// The idempotency key: a terminal's (or admin's) transaction number, or a 128-bit id.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub enum IdemKey {
    Terminal { terminal: String, txn: String },
    Admin { admin: String, txn: String },
    Id(#[rkyv(with = crate::wire::AsHalves)] u128),
}

impl IdemKey {
    /// The key as text (`terminal/txn`, `admin:name/txn` or 32 hex digits), built directly:
    /// every result carries it, so it avoids the formatting machinery.
    pub fn text(&self) -> String {
        match self {
            IdemKey::Terminal { terminal, txn } => [terminal.as_str(), "/", txn.as_str()].concat(),
            IdemKey::Admin { admin, txn } => ["admin:", admin.as_str(), "/", txn.as_str()].concat(),
            IdemKey::Id(id) => format!("{id:032x}"),
        }
    }
}

impl std::fmt::Display for IdemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdemKey::Terminal { terminal, txn } => write!(f, "{terminal}/{txn}"),
            IdemKey::Admin { admin, txn } => write!(f, "admin:{admin}/{txn}"),
            IdemKey::Id(id) => write!(f, "{id:032x}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub enum Body {
    Purchase(Purchase),
    Quote(Purchase),
    Return(Return),
    Hold(Hold),
    Capture(Capture),
    Release(Release),
    Adjust(Adjust),
    Event(Event),
    Enroll(Enroll),
    IssueCards(IssueCards),
    Link(Link),
    LoadProgram(LoadProgram),
    Tick(Tick),
    Statement(StatementQuery),
    AssignPromotion(AssignPromotion),
    IssueCodes(IssueCodes),
    // The full path: rkyv's derive has a `Tag` of its own in scope.
    Tag(crate::command::Tag),
    Balance(BalanceQuery),
    Snapshot(SnapshotQuery),
}

/// The name of a command, as in its JSON key and in results.
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
pub enum CommandKind {
    Purchase,
    Quote,
    Return,
    Hold,
    Capture,
    Release,
    Adjust,
    Event,
    Enroll,
    IssueCards,
    Link,
    LoadProgram,
    Tick,
    Statement,
    AssignPromotion,
    IssueCodes,
    Tag,
    /// A command that could not be read, so its kind is not known.
    Unknown,
    // After `Unknown`: the wire form numbers the kinds in this order.
    Balance,
    Snapshot,
}

impl CommandKind {
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Purchase => "purchase",
            CommandKind::Quote => "quote",
            CommandKind::Return => "return",
            CommandKind::Hold => "hold",
            CommandKind::Capture => "capture",
            CommandKind::Release => "release",
            CommandKind::Adjust => "adjust",
            CommandKind::Event => "event",
            CommandKind::Enroll => "enroll",
            CommandKind::IssueCards => "issue_cards",
            CommandKind::Link => "link",
            CommandKind::LoadProgram => "load_program",
            CommandKind::Tick => "tick",
            CommandKind::Statement => "statement",
            CommandKind::AssignPromotion => "assign_promotion",
            CommandKind::IssueCodes => "issue_codes",
            CommandKind::Tag => "tag",
            CommandKind::Unknown => "unknown",
            CommandKind::Balance => "balance",
            CommandKind::Snapshot => "snapshot",
        }
    }

    /// The kind whose body a command line's key names (`purchase`, `issue_cards`, …).
    pub fn of_body_key(key: &str) -> Option<CommandKind> {
        use serde::de::IntoDeserializer;
        let kind = CommandKind::deserialize(key.into_deserializer());
        let kind: Result<CommandKind, serde::de::value::Error> = kind;
        kind.ok().filter(|kind| *kind != CommandKind::Unknown)
    }

    /// Commands only an operator (admin identity) may send.
    pub fn admin_only(self) -> bool {
        matches!(
            self,
            CommandKind::Adjust
                | CommandKind::IssueCards
                | CommandKind::LoadProgram
                | CommandKind::Tick
                | CommandKind::Statement
                | CommandKind::AssignPromotion
                | CommandKind::IssueCodes
                | CommandKind::Tag
                | CommandKind::Snapshot
        )
    }
}

impl Body {
    pub fn kind(&self) -> CommandKind {
        match self {
            Body::Purchase(_) => CommandKind::Purchase,
            Body::Quote(_) => CommandKind::Quote,
            Body::Return(_) => CommandKind::Return,
            Body::Hold(_) => CommandKind::Hold,
            Body::Capture(_) => CommandKind::Capture,
            Body::Release(_) => CommandKind::Release,
            Body::Adjust(_) => CommandKind::Adjust,
            Body::Event(_) => CommandKind::Event,
            Body::Enroll(_) => CommandKind::Enroll,
            Body::IssueCards(_) => CommandKind::IssueCards,
            Body::Link(_) => CommandKind::Link,
            Body::LoadProgram(_) => CommandKind::LoadProgram,
            Body::Tick(_) => CommandKind::Tick,
            Body::Statement(_) => CommandKind::Statement,
            Body::AssignPromotion(_) => CommandKind::AssignPromotion,
            Body::IssueCodes(_) => CommandKind::IssueCodes,
            Body::Tag(_) => CommandKind::Tag,
            Body::Balance(_) => CommandKind::Balance,
            Body::Snapshot(_) => CommandKind::Snapshot,
        }
    }
}

/// How a command names a member: the engine's member id, or an alias.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MemberRef {
    Id(u64),
    Phone(String),
    Card(String),
}

/// An alias that can find a member.
#[derive(
    Debug,
    Clone,
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
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Alias {
    Phone(String),
    Card(String),
}

/// Names an earlier command by its idempotency key. Without `terminal`, `admin` or `id` it
/// means the same terminal (or admin) as the command that names it.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct TxnRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
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
#[serde(deny_unknown_fields)]
pub struct Line {
    /// Shared, so results and order records name the SKU without copying it (`names.rs`).
    pub sku: Name,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Name>,
    pub qty: i64,
    #[rkyv(with = crate::wire::AsDecimal)]
    pub unit_price: Decimal,
    /// The POS's own discount on this line, in money.
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub discount: Decimal,
}

/// What part of an order is paid with loyalty value.
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
#[serde(deny_unknown_fields)]
pub struct Payment {
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub points: i64,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub credit: Decimal,
}

// `Line` and `Payment` hash as `derive(Hash)` would, field by field in order, but their
// amounts through `hash_decimal`: an order has a dozen amounts, and the idempotency digest
// of every command hashes them all.
impl Hash for Line {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sku.hash(state);
        self.category.hash(state);
        self.qty.hash(state);
        hash_decimal(&self.unit_price, state);
        hash_decimal(&self.discount, state);
    }
}

impl Hash for Payment {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.points.hash(state);
        hash_decimal(&self.credit, state);
    }
}

/// Feeds `state` the bytes `Decimal`'s own `Hash` does (the four 32-bit words of the
/// normalised value: low, middle, high, flags), in one write, working in 64 bits when the
/// mantissa fits: `Decimal::normalize` divides a 96-bit number by ten for every trailing zero.
#[allow(
    clippy::host_endian_bytes,
    reason = "the same bytes as `u32::hash`, which digests kept in checkpoints came from"
)]
fn hash_decimal<H: Hasher>(value: &Decimal, state: &mut H) {
    let mantissa = value.mantissa().unsigned_abs();
    let Ok(mut small) = u64::try_from(mantissa) else {
        return value.hash(state);
    };
    let mut words = [0u32; 4];
    // Zero of any scale or sign normalises to all-zero words.
    if small != 0 {
        let mut scale = value.scale();
        while scale > 0 && small % 10 == 0 {
            small /= 10;
            scale -= 1;
        }
        let sign = if value.is_sign_negative() {
            1u32 << 31
        } else {
            0
        };
        words = [small as u32, (small >> 32) as u32, 0, sign | scale << 16];
    }
    // One write of the sixteen bytes the four `u32::hash` calls would write in turn.
    let mut bytes = [0u8; 16];
    for (chunk, word) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    state.write(&bytes);
}

fn is_zero_i64(value: &i64) -> bool {
    *value == 0
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Purchase {
    pub member: MemberRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub lines: Vec<Line>,
    /// What the customer owes before loyalty payments and rewards (may include tax).
    #[rkyv(with = crate::wire::AsDecimal)]
    pub total: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[rkyv(with = rkyv::with::Map<crate::wire::AsDecimal>)]
    pub shipping: Option<Decimal>,
    #[serde(default, skip_serializing_if = "is_default_payment")]
    pub pay: Payment,
    /// Pay with what an earlier `hold` reserved (captures it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<TxnRef>,
    /// Catalog rewards redeemed in this order, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<String>,
    /// Promotion codes presented.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<String>,
}

fn is_default_payment(pay: &Payment) -> bool {
    *pay == Payment::default()
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct ReturnLine {
    pub sku: String,
    pub qty: i64,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Return {
    pub order: TxnRef,
    /// The returned lines; absent means everything not yet returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<ReturnLine>>,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    pub member: MemberRef,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub points: i64,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub credit: Decimal,
}

/// Turns (part of) a hold into a redemption; what is not captured is released.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    pub hold: TxnRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[rkyv(with = rkyv::with::Map<crate::wire::AsDecimal>)]
    pub credit: Option<Decimal>,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub hold: TxnRef,
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
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReason {
    Reward,
    Goodwill,
    Refund,
    Correction,
}

/// An operator's manual change; positive credits, negative debits.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Adjust {
    pub member: MemberRef,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub points: i64,
    #[serde(default, skip_serializing_if = "Decimal::is_zero")]
    #[rkyv(with = crate::wire::AsDecimal)]
    pub credit: Decimal,
    pub reason: AdjustReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub member: MemberRef,
    pub name: String,
}

#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Enroll {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<String>,
    /// Month and day, `MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birthday: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Creates members that exist only as a card number until the card is first used.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct IssueCards {
    #[serde(default)]
    pub count: u32,
    /// Generated numbers are this prefix and a 10-digit sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Or the card numbers themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cards: Vec<String>,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub member: MemberRef,
    pub alias: Alias,
}

#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct LoadProgram {
    /// The program file's TOML text.
    pub program: String,
}

/// Engine-issued: do all time-driven work due up to the command's `at`.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Tick {}

/// The most entries one statement page holds.
pub const MAX_STATEMENT_PAGE: u32 = 500;

/// A query (operators only): one page of a member's ledger entries, newest first. Changes
/// nothing and is not remembered.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    pub member: MemberRef,
    /// Page number, 0 for the newest entries.
    #[serde(default)]
    pub page: u32,
    #[serde(default = "default_per_page")]
    pub per_page: u32,
}

fn default_per_page() -> u32 {
    50
}

/// A query (terminals and operators): a member's balances and tier, found by id or alias,
/// consistent with every command acknowledged before it. Changes nothing, enrols nobody and is
/// not remembered.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct BalanceQuery {
    pub member: MemberRef,
}

/// Every member of the command's merchant (or of every merchant), as of one log position,
/// streamed to an operator in `rows` frames (`docs/protocol.md`).
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// Every merchant, not only the command's: for an operator whose certificate names none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub every_merchant: bool,
}

/// Gives a `regular` promotion to members, or to everyone who holds a tier.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct AssignPromotion {
    pub promotion: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberRef>,
    /// A tier id: members holding it at the start of an order may use the promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// Generates `count` single-use codes of a `scratch` promotion. The codes are drawn from a
/// cryptographic generator keyed by `seed` (64 hex digits, 256 bits), so replaying the
/// command gives the same codes; the sender must choose the seed at random and keep it secret.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct IssueCodes {
    pub promotion: String,
    pub count: u32,
    pub seed: String,
}

/// Adds tags to a member and removes tags from it (promotion conditions read tags).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[serde(deny_unknown_fields)]
pub struct Tag {
    pub member: MemberRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[cfg(test)]
mod tests {
    use crate::names::Name;
    use std::hash::{Hash, Hasher};

    use proptest::prelude::*;
    use rust_decimal::Decimal;

    use super::{hash_decimal, Line, Payment};

    /// The bytes a `Hash` writes.
    #[derive(Default)]
    struct Written(Vec<u8>);

    impl Hasher for Written {
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }

        fn finish(&self) -> u64 {
            0
        }
    }

    fn written(hash: impl FnOnce(&mut Written)) -> Vec<u8> {
        let mut state = Written::default();
        hash(&mut state);
        state.0
    }

    /// `Line` and `Payment` as `derive(Hash)` had them: digests kept in checkpoints came
    /// from these.
    #[derive(Hash)]
    struct DerivedLine<'a>(&'a Name, &'a Option<Name>, i64, &'a Decimal, &'a Decimal);

    #[derive(Hash)]
    struct DerivedPayment<'a>(i64, &'a Decimal);

    fn decimal() -> impl Strategy<Value = Decimal> {
        let mantissa = prop_oneof![
            -1_000_000i128..1_000_000,
            any::<i64>().prop_map(i128::from),
            -(1i128 << 95)..(1i128 << 95),
        ];
        (mantissa, 0u32..=28).prop_map(|(m, scale)| Decimal::from_i128_with_scale(m, scale))
    }

    proptest! {
        #[test]
        fn decimals_hash_as_decimal_does(value in decimal()) {
            prop_assert_eq!(
                written(|s| hash_decimal(&value, s)),
                written(|s| value.hash(s))
            );
        }

        #[test]
        fn lines_and_payments_hash_as_derived(
            qty in any::<i64>(),
            unit_price in decimal(),
            discount in decimal(),
            category in proptest::option::of("[a-z]{0,6}"),
        ) {
            let line = Line {
                sku: Name::new("BEANS-1KG"),
                category: category.map(Name::from),
                qty,
                unit_price,
                discount,
            };
            let derived = DerivedLine(&line.sku, &line.category, qty, &unit_price, &discount);
            prop_assert_eq!(written(|s| line.hash(s)), written(|s| derived.hash(s)));
            let payment = Payment { points: qty, credit: discount };
            let derived = DerivedPayment(qty, &discount);
            prop_assert_eq!(written(|s| payment.hash(s)), written(|s| derived.hash(s)));
        }
    }

    #[test]
    fn zero_and_trailing_zeros_hash_as_decimal_does() {
        for text in [
            "0", "-0", "0.000", "-0.00", "24.00", "-24.000", "1e-28", "100",
        ] {
            let value: Decimal = if let Some(exponent) = text.strip_prefix("1e-") {
                Decimal::new(1, exponent.parse().unwrap())
            } else {
                text.parse().unwrap()
            };
            assert_eq!(
                written(|s| hash_decimal(&value, s)),
                written(|s| value.hash(s)),
                "{text}"
            );
        }
    }
}
