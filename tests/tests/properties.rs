//! Property tests of the deterministic core over random command sequences.
//!
//! A sequence is generated as abstract steps (how far time moves, when the order happened,
//! who sends it, what it asks for). Each step becomes a concrete protocol command just before
//! it is applied, looking at the ledger and at earlier results to aim at something real (an
//! open hold, an applied purchase, the points a member has available), so the same steps on
//! the same engine always give the same commands. Commands are applied with `Ledger::apply`
//! at an engine clock that only moves forward; before each command its merchant is ticked
//! when it has time-driven work due, as the replayer and the server do.
//!
//! Two merchants share one ledger: the demo program (`negative_balance = "allow"`, 14 pending
//! days, expiry after 365 days) and a small program with `negative_balance = "clamp"`, one
//! pending day, expiry at the end of the month and a two-minute hold timeout, so that pending
//! release, expiry, hold lapse, birthdays and month boundaries all happen.
//!
//! Properties, checked after every command and every engine tick:
//! - conservation: `Ledger::verify` holds, and every member's points and credit equal the
//!   sums of the journal entries written for it (summed here, from `take_entries`); what is
//!   held equals what the member's open holds reserved;
//! - idempotency: the same key with the same content gives `duplicate` with the first result
//!   and changes nothing; the same key with other content is `conflict` and changes nothing;
//! - a rejected command changes nothing (same digest, no entries); neither does a quote, and
//!   a quote made just before a purchase predicts it (same rules, lines, discounts, payment,
//!   or the same rejection);
//! - available points are never negative unless the member carries a debt, and a debt only
//!   appears through a return under `negative_balance = "allow"`; under `"clamp"` neither
//!   points nor credit go negative;
//! - returns take back, per rule, no more than the order earned and no more than it paid,
//!   and exactly that once the whole order is back;
//! - after a tick nothing is left due (no expired or releasable lot, no lapsed hold); a tier
//!   falls only at a tick or a program change; lifetime counters never go negative;
//! - every command survives its JSON form unchanged;
//! - determinism: two fresh ledgers given the same steps give the same commands, the same
//!   results (ticks included), the same members and the same digest.
//!
//! `PROPTEST_CASES` raises the number of cases for a deeper run; `SHOW_COVERAGE` prints what
//! the generator reached.

use std::collections::HashMap;

use chrono::TimeDelta;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rust_decimal::Decimal;
use tally_engine::core::Counters;
use tally_engine::core::{normalize_phone, Ledger, Member};
use tally_engine::program::{Combine, Downgrade, NegativeBalance, Program, Window};
use tally_engine::replay::tick_command;
use tally_engine::workload::DEMO_PROGRAM;
use tally_protocol::{
    parse_command_line, Adjust, AdjustReason, Alias, Body, Capture, Command, CommandKind,
    CommandResult, Enroll, Event, Hold, IdemKey, IssueCards, Line, Link, LoadProgram, MemberRef,
    Origin, Payment, Purchase, Reason, Release, Return, ReturnLine, Status, Timestamp, TxnRef,
    Wallet,
};

const DEMO: &str = "demo";
const CLAMP: &str = "clamp";
const ADMIN: &str = "ops";

/// A small program for the second merchant: whatever a return cannot take back is written
/// off, points are pending for a day and expire at the end of the month, holds lapse fast.
fn clamp_program(version: u32, variant: u8) -> String {
    let (per_amount, multiplier) = match variant % 3 {
        0 => ("2", "2"),
        1 => ("3", "1.5"),
        _ => ("1.5", "3"),
    };
    // Variant 2 drops the "vip" tier, so members holding it are re-qualified.
    let vip = if variant % 3 == 2 {
        String::new()
    } else {
        format!(
            r#"
[[tiers]]
id = "vip"
name = "VIP"
window = "rolling"
rolling_months = 1
points_earned = 300
earn_multiplier = "{multiplier}"
cashback_percent = 1
birthday_bonus = 50
"#
        )
    };
    format!(
        r#"merchant = "clamp"
version = {version}
currency = "USD"
time_zone = "Europe/Berlin"
country_code = "49"
point_value = "0.05"
max_redeem_percent = 100
min_redeem_points = 10
pending_days = 1
expiry = {{ end_of = "month" }}
negative_balance = "clamp"
hold_timeout_s = 120
late_event_days = 7

[[rules]]
id = "per_dollar"
kind = "per_amount"
points = "{per_amount}"

[[rules]]
id = "coffee_units"
kind = "per_unit"
points = 3
categories = ["coffee"]

[[rules]]
id = "visit"
kind = "per_order"
points = 5
min_total = "3.00"

[[rules]]
id = "cashback"
kind = "cashback"
percent = 10

[[rules]]
id = "signup"
kind = "per_event"
event = "account_created"
points = 20

[[rules]]
id = "review"
kind = "per_event"
event = "review"
points = 15

[[rules]]
id = "birthday"
kind = "per_event"
event = "birthday"
points = 30

[[tiers]]
id = "basic"
name = "Basic"
{vip}
[[rewards]]
id = "free_latte"
name = "A free latte"
kind = "free_product"
sku = "LATTE"
points = 60

[[rewards]]
id = "ten_percent"
name = "10% off"
kind = "percent_discount"
percent = 10
points = 50

[[rewards]]
id = "five_off"
name = "$5 off"
kind = "fixed_discount"
amount = "5.00"
points = 80

[[rewards]]
id = "free_shipping"
name = "Free delivery"
kind = "free_shipping"
points = 20
"#
    )
}

fn demo_program(version: u32) -> String {
    let text = DEMO_PROGRAM.replacen("version = 1\n", &format!("version = {version}\n"), 1);
    assert!(
        version == 1 || text != DEMO_PROGRAM,
        "the demo program names its version as `version = 1`"
    );
    text
}

fn start() -> Timestamp {
    "2026-01-20T15:00:00Z".parse().expect("valid time")
}

// ---------------------------------------------------------------------------------------------
// Abstract steps
// ---------------------------------------------------------------------------------------------

/// When the order happened, relative to the engine clock.
#[derive(Debug, Clone, Copy)]
enum When {
    Now,
    /// Seconds earlier (a little late, within the late-event window).
    Earlier(i64),
    /// Days earlier: stale for a terminal, an import for an operator.
    Old(i64),
    /// Seconds ahead, within the allowed skew.
    Ahead(i64),
    /// Seconds ahead, beyond the allowed skew.
    TooFar(i64),
}

#[derive(Debug, Clone)]
struct BasketLine {
    sku: u8,
    qty: u8,
    discount: bool,
}

#[derive(Debug, Clone)]
struct Order {
    member: u8,
    lines: Vec<BasketLine>,
    /// 0..16: extra on top of the lines (tax); 15 makes the total too small.
    tax: u8,
    shipping: bool,
    channel: u8,
    store: u8,
    pay_points: u8,
    pay_credit: u8,
    rewards: Vec<u8>,
    hold: Option<u16>,
    quote: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Purchase(Order),
    Return {
        pick: u16,
        any_command: bool,
        lines: Option<Vec<(u8, u8)>>,
    },
    Hold {
        member: u8,
        points: u8,
        credit: u8,
        /// What the terminal does next with this hold, this many seconds later.
        then: Option<(u16, Box<Op>)>,
    },
    Capture {
        pick: u16,
        points: Option<u8>,
        credit: Option<u8>,
    },
    Release {
        pick: u16,
    },
    Adjust {
        member: u8,
        points: u8,
        credit: u8,
        reason: u8,
    },
    Event {
        member: u8,
        name: u8,
    },
    Enroll {
        phone: Option<u8>,
        card: Option<u8>,
        birthday: Option<(u8, u8)>,
    },
    Link {
        member: u8,
        alias: u8,
    },
    IssueCards {
        card: u8,
    },
    LoadProgram {
        variant: u8,
        stale: bool,
    },
    /// The exact same command as an earlier one.
    Duplicate {
        pick: u16,
    },
    /// An earlier command's key with other content.
    Conflict {
        pick: u16,
        how: u8,
    },
    /// A member buys, waits `wait_hours`, spends everything available (`spend` even: by an
    /// operator's debit; odd: by a hold), then returns the order: the return must take back
    /// more than is left, which is a debt under "allow" and a write-off under "clamp".
    Story {
        order: Order,
        wait_hours: u16,
        spend: u8,
        lines: Option<Vec<(u8, u8)>>,
    },
}

#[derive(Debug, Clone)]
struct Step {
    /// Seconds the engine clock moves before this command.
    advance: i64,
    when: When,
    /// 0..=1 terminal with a terminal key, 2 terminal with an id key, 3 admin, 4 admin id.
    origin: u8,
    /// 0, 1: demo; 2: clamp.
    merchant: u8,
    op: Op,
}

fn advance() -> impl Strategy<Value = i64> {
    prop_oneof![
        5 => Just(0i64),
        6 => 1i64..600,
        3 => 600i64..7_200,
        3 => 3_600i64..(3 * 86_400),
        2 => 86_400i64..(20 * 86_400),
        1 => (20 * 86_400i64)..(200 * 86_400),
    ]
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        24 => Just(When::Now),
        3 => (1i64..(3 * 86_400)).prop_map(When::Earlier),
        2 => (8i64..60).prop_map(When::Old),
        2 => (1i64..=300).prop_map(When::Ahead),
        1 => (301i64..3_600).prop_map(When::TooFar),
    ]
}

fn order() -> impl Strategy<Value = Order> {
    let line = (any::<u8>(), 1u8..=3, prop::bool::weighted(0.15))
        .prop_map(|(sku, qty, discount)| BasketLine { sku, qty, discount });
    (
        any::<u8>(),
        prop::collection::vec(line, 1..=4),
        0u8..16,
        prop::bool::weighted(0.2),
        any::<u8>(),
        any::<u8>(),
        prop_oneof![3 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![5 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![6 => Just(vec![]), 2 => prop::collection::vec(any::<u8>(), 1..=2)],
        prop_oneof![6 => Just(None), 1 => any::<u16>().prop_map(Some)],
        prop::bool::weighted(0.08),
    )
        .prop_map(
            |(
                member,
                lines,
                tax,
                shipping,
                channel,
                store,
                pay_points,
                pay_credit,
                rewards,
                hold,
                quote,
            )| Order {
                member,
                lines,
                tax,
                shipping,
                channel,
                store,
                pay_points,
                pay_credit,
                rewards,
                hold,
                quote,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => order().prop_map(Op::Purchase),
        4 => (
            any::<u16>(),
            prop::bool::weighted(0.1),
            prop::option::weighted(0.6, prop::collection::vec((any::<u8>(), 0u8..=3), 1..=3)),
        )
            .prop_map(|(pick, any_command, lines)| Op::Return { pick, any_command, lines }),
        5 => (
            any::<u8>(),
            prop_oneof![5 => any::<u8>(), 1 => Just(ALL)],
            any::<u8>(),
            prop::option::weighted(0.7, (prop_oneof![4 => 0u16..100, 1 => 0u16..1_200], follow_up())),
        )
            .prop_map(|(member, points, credit, then)| Op::Hold {
                member,
                points,
                credit,
                then: then.map(|(delay, op)| (delay, Box::new(op))),
            }),
        3 => (any::<u16>(), prop::option::of(any::<u8>()), prop::option::weighted(0.2, any::<u8>()))
            .prop_map(|(pick, points, credit)| Op::Capture { pick, points, credit }),
        2 => any::<u16>().prop_map(|pick| Op::Release { pick }),
        5 => (
            any::<u8>(),
            prop_oneof![3 => any::<u8>(), 1 => Just(ALL)],
            prop_oneof![5 => any::<u8>(), 1 => Just(ALL)],
            any::<u8>(),
        )
            .prop_map(|(member, points, credit, reason)| Op::Adjust { member, points, credit, reason }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(member, name)| Op::Event { member, name }),
        2 => (
            prop::option::of(any::<u8>()),
            prop::option::of(any::<u8>()),
            prop::option::weighted(0.6, (any::<u8>(), any::<u8>())),
        )
            .prop_map(|(phone, card, birthday)| Op::Enroll { phone, card, birthday }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(member, alias)| Op::Link { member, alias }),
        1 => any::<u8>().prop_map(|card| Op::IssueCards { card }),
        1 => (any::<u8>(), prop::bool::weighted(0.2))
            .prop_map(|(variant, stale)| Op::LoadProgram { variant, stale }),
        3 => any::<u16>().prop_map(|pick| Op::Duplicate { pick }),
        2 => (any::<u16>(), any::<u8>()).prop_map(|(pick, how)| Op::Conflict { pick, how }),
        2 => (
            order(),
            0u16..(40 * 24),
            any::<u8>(),
            prop::option::weighted(0.4, prop::collection::vec((any::<u8>(), 1u8..=3), 1..=2)),
        )
            .prop_map(|(order, wait_hours, spend, lines)| Op::Story {
                order: Order { member: 0, hold: None, quote: false, ..order },
                wait_hours,
                spend,
                lines,
            }),
    ]
}

/// What follows a hold: a capture, a release or an order paying with it. `pick` 6 names the
/// hold made last.
fn follow_up() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (prop::option::of(any::<u8>()), prop::option::weighted(0.3, any::<u8>()))
            .prop_map(|(points, credit)| Op::Capture { pick: 6, points, credit }),
        1 => Just(Op::Release { pick: 6 }),
        2 => order().prop_map(|order| Op::Purchase(Order { hold: Some(6), quote: false, ..order })),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (advance(), when(), 0u8..5, 0u8..3, op()).prop_map(|(advance, when, origin, merchant, op)| {
        Step {
            advance,
            when,
            origin,
            merchant,
            op,
        }
    })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..=60)
}

// ---------------------------------------------------------------------------------------------
// From steps to commands
// ---------------------------------------------------------------------------------------------

/// (sku, category, unit price in cents)
const CATALOG: &[(&str, &str, i64)] = &[
    ("LATTE", "coffee", 450),
    ("ESPRESSO", "coffee", 300),
    ("CROISSANT", "pastry", 350),
    ("DAY-OLD-MUFFIN", "pastry", 150),
    ("SANDWICH", "food", 895),
    ("BEANS-1KG", "beans", 2400),
    ("MUG", "merch", 1500),
];
const CHANNELS: &[&str] = &["in_store", "in_store", "web", "delivery", "kiosk"];
const STORES: &[Option<&str>] = &[None, Some("downtown"), Some("airport"), Some("harbor")];
const REWARDS: &[&str] = &[
    "free_latte",
    "ten_percent",
    "five_off",
    "free_shipping",
    "no_such_reward",
];
const PAY_POINTS: &[i64] = &[0, 10, 50, 100, 150, 300, 450, 1_000, 5_000];
const PAY_CREDIT_CENTS: &[i64] = &[0, 50, 200, 1_000];
const HOLD_POINTS: &[i64] = &[0, 20, 20, 50, 100, 200, 500];
const HOLD_CREDIT_CENTS: &[i64] = &[0, 0, 0, 50, 100, 500];
const ADJUST_POINTS: &[i64] = &[0, -500, -100, -20, 20, 100, 500, 500, 2_000];
const ADJUST_CREDIT_CENTS: &[i64] = &[0, 0, 0, -500, 300, 2_000];
const EVENTS: &[&str] = &[
    "social_share",
    "review",
    "newsletter",
    "account_created",
    "birthday",
    "store_visit",
    " ",
];

fn pick<T: Clone>(list: &[T], selector: impl Into<u64>) -> T {
    list[(selector.into() % list.len() as u64) as usize].clone()
}

fn member_ref(selector: u8) -> MemberRef {
    match selector % 20 {
        0..=4 => MemberRef::Card("C1".into()),
        5..=7 => MemberRef::Phone("+15550001111".into()),
        8 => MemberRef::Phone("+1 (555) 000-1111".into()),
        9 | 10 => MemberRef::Card("C2".into()),
        11 => MemberRef::Card(" C3 ".into()),
        12 => MemberRef::Phone("+1 (555) 000-2222".into()),
        13 => MemberRef::Phone("555-000-3333".into()),
        14 => MemberRef::Card("K1".into()),
        15 => MemberRef::Card("K2".into()),
        16 | 17 => MemberRef::Id(1),
        18 => MemberRef::Id(2),
        _ => MemberRef::Id(7),
    }
}

/// An earlier item, mostly one of the last few.
fn recent<T: Clone>(list: &[T], selector: u16) -> Option<T> {
    if list.is_empty() {
        return None;
    }
    // One time in four any item, else one of the last three.
    let index = if selector.rem_euclid(4) > 0 {
        list.len() - 1 - (selector as usize / 4) % list.len().min(3)
    } else {
        selector as usize % list.len()
    };
    Some(list[index].clone())
}

fn alias(selector: u8) -> Alias {
    match selector % 8 {
        0 => Alias::Phone("+15550001111".into()),
        1 => Alias::Phone("+15550004444".into()),
        2 => Alias::Phone("not a phone".into()),
        3 => Alias::Card("C1".into()),
        4 => Alias::Card("C4".into()),
        5 => Alias::Card("K1".into()),
        6 => Alias::Card("C5".into()),
        _ => Alias::Phone("030 1234567".into()),
    }
}

fn cents(amount: i64) -> Decimal {
    Decimal::new(amount, 2)
}

/// What the builder remembers of the commands it made and of their results.
#[derive(Default)]
struct Builder {
    seq: u64,
    commands: Vec<Command>,
    /// Applied purchases: (merchant, key, SKUs of its lines).
    purchases: Vec<(&'static str, IdemKey, Vec<String>)>,
    /// Every hold sent, applied or not: (merchant, key).
    holds: Vec<(&'static str, IdemKey)>,
    versions: HashMap<&'static str, u32>,
}

/// A reference to an earlier command's key, as `origin` would write it.
fn reference(key: &IdemKey, origin: &Origin, short: bool) -> TxnRef {
    // Built from its JSON form: the reference's fields are the protocol's business.
    let json = match key {
        IdemKey::Terminal { terminal, txn } => {
            if short && *origin == Origin::Terminal(terminal.clone()) {
                serde_json::json!({ "txn": txn })
            } else {
                serde_json::json!({ "terminal": terminal, "txn": txn })
            }
        }
        // Operators' commands are named by the same operator.
        IdemKey::Admin { txn, .. } => serde_json::json!({ "txn": txn }),
        IdemKey::Id(id) => serde_json::json!({ "id": format!("{id:032x}") }),
    };
    serde_json::from_value(json).expect("a valid reference")
}

fn missing_reference() -> TxnRef {
    serde_json::from_value(serde_json::json!({ "terminal": "pos-9", "txn": "never-sent" }))
        .expect("a valid reference")
}

fn merchant_name(name: &str) -> &'static str {
    if name == CLAMP {
        CLAMP
    } else {
        DEMO
    }
}

/// The member a reference names now, if any.
fn find_member<'l>(ledger: &'l Ledger, merchant: &str, member: &MemberRef) -> Option<&'l Member> {
    let merchant = ledger.merchant(merchant)?;
    match member {
        MemberRef::Id(id) => merchant.members.get((*id as usize).checked_sub(1)?),
        MemberRef::Card(card) => merchant.member_by_alias(&Alias::Card(card.trim().into())),
        MemberRef::Phone(phone) => {
            let phone = normalize_phone(phone, &merchant.program().country_code).ok()?;
            merchant.member_by_alias(&Alias::Phone(phone))
        }
    }
}

fn available(ledger: &Ledger, merchant: &str, member: &MemberRef) -> i64 {
    find_member(ledger, merchant, member).map_or(0, |m| m.available_points().max(0))
}

/// The selector value that means "as many points as the member has (and the order allows)".
const ALL: u8 = 255;

impl Builder {
    fn origin_and_key(&mut self, origin: u8, admin_only: bool) -> (Origin, IdemKey) {
        self.seq += 1;
        let seq = self.seq;
        let id =
            || IdemKey::Id(u128::from(seq).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
        let origin = if admin_only { 3 + origin % 2 } else { origin };
        match origin {
            0 | 1 => {
                let terminal = format!("pos-{}", origin + 1);
                (
                    Origin::Terminal(terminal.clone()),
                    IdemKey::Terminal {
                        terminal,
                        txn: seq.to_string(),
                    },
                )
            }
            2 => (Origin::Terminal("pos-3".into()), id()),
            3 => (
                Origin::Admin(ADMIN.into()),
                IdemKey::Admin {
                    admin: ADMIN.into(),
                    txn: seq.to_string(),
                },
            ),
            _ => (Origin::Admin(ADMIN.into()), id()),
        }
    }

    /// Remembers what a command did, for the commands that name it later.
    fn record(&mut self, command: &Command, result: &CommandResult) {
        if let (Body::Purchase(order), Status::Applied(_)) = (&command.body, &result.status) {
            let skus = order.lines.iter().map(|l| l.sku.to_string()).collect();
            let merchant = merchant_name(&command.merchant);
            if !self
                .purchases
                .iter()
                .any(|(m, k, _)| *m == merchant && *k == command.key)
            {
                self.purchases.push((merchant, command.key.clone(), skus));
            }
        }
    }

    /// A hold still open at `now` (mostly) or any hold ever sent: (merchant, key, owner).
    fn pick_hold(
        &self,
        ledger: &Ledger,
        pick: u16,
        now: Timestamp,
    ) -> Option<(&'static str, IdemKey, Option<u64>)> {
        let mut open = Vec::new();
        for merchant in [DEMO, CLAMP] {
            let members = ledger.merchant(merchant).map(|m| m.members.iter());
            for member in members.into_iter().flatten() {
                for hold in member.open_holds.iter().filter(|h| h.deadline > now) {
                    let key = hold.key.to_idem_key();
                    open.push((hold.deadline, merchant, key, Some(member.id)));
                }
            }
        }
        open.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
        if pick.rem_euclid(5) > 0 && !open.is_empty() {
            return recent(&open, pick / 5).map(|(_, m, k, owner)| (m, k, owner));
        }
        recent(&self.holds, pick / 5).map(|(m, k)| (m, k, None))
    }

    fn build(&mut self, step: &Step, now: Timestamp, ledger: &Ledger) -> Command {
        let step_merchant: &'static str = if step.merchant == 2 { CLAMP } else { DEMO };
        let at = match step.when {
            When::Now => now,
            When::Earlier(s) => now - TimeDelta::seconds(s),
            When::Old(d) => now - TimeDelta::days(d),
            When::Ahead(s) | When::TooFar(s) => now + TimeDelta::seconds(s),
        };
        let command = match &step.op {
            Op::Duplicate { pick } if !self.commands.is_empty() => {
                recent(&self.commands, *pick).expect("not empty")
            }
            Op::Conflict { pick, how } if !self.commands.is_empty() => {
                let mut command = recent(&self.commands, *pick).expect("not empty");
                match (how % 3, &mut command.body) {
                    (0, Body::Purchase(order)) => order.total += Decimal::ONE,
                    (1, Body::Event(event)) => event.name.push('x'),
                    (1, _) => {
                        command.body = Body::Event(Event {
                            member: MemberRef::Card("C1".into()),
                            name: "review".into(),
                        })
                    }
                    _ => command.at -= TimeDelta::seconds(1),
                }
                command
            }
            Op::Duplicate { .. } | Op::Conflict { .. } => {
                let (origin, key) = self.origin_and_key(step.origin, false);
                let body = Body::Event(Event {
                    member: member_ref(0),
                    name: "newsletter".into(),
                });
                Command {
                    merchant: step_merchant.into(),
                    origin,
                    key,
                    at,
                    program_version: None,
                    body,
                }
            }
            op => self.build_new(op, step, step_merchant, (now, at), ledger),
        };
        self.commands.push(command.clone());
        command
    }

    fn build_new(
        &mut self,
        op: &Op,
        step: &Step,
        step_merchant: &'static str,
        (now, at): (Timestamp, Timestamp),
        ledger: &Ledger,
    ) -> Command {
        let admin_only = matches!(
            op,
            Op::Adjust { .. } | Op::IssueCards { .. } | Op::LoadProgram { .. }
        );
        // A command naming an earlier one goes to that one's merchant.
        let mut hold_owner = None;
        let target: Option<(&'static str, IdemKey)> = match op {
            Op::Return {
                pick,
                any_command: true,
                ..
            } => recent(&self.commands, *pick).map(|c| (merchant_name(&c.merchant), c.key)),
            Op::Return { pick, .. } => recent(&self.purchases, *pick).map(|(m, key, _)| (m, key)),
            Op::Capture { pick, .. }
            | Op::Release { pick }
            | Op::Purchase(Order {
                hold: Some(pick), ..
            }) => self.pick_hold(ledger, *pick, now).map(|(m, key, owner)| {
                hold_owner = owner;
                (m, key)
            }),
            _ => None,
        };
        let merchant = target.as_ref().map_or(step_merchant, |(m, _)| *m);
        let target = target.map(|(_, key)| key);
        // Operators' commands are named by the same operator.
        let origin_selector = match &target {
            Some(IdemKey::Admin { .. }) => 3,
            _ => step.origin,
        };
        let (origin, key) = self.origin_and_key(origin_selector, admin_only);
        let target_ref = |short: bool| match &target {
            Some(key) => reference(key, &origin, short),
            None => missing_reference(),
        };
        let body = match op {
            Op::Purchase(order) => {
                let mut lines = Vec::new();
                let mut sum = 0;
                for line in &order.lines {
                    let (sku, category, price) = pick(CATALOG, line.sku);
                    let qty = i64::from(line.qty);
                    let discount = if line.discount { 50 } else { 0 };
                    sum += price * qty - discount;
                    lines.push(Line {
                        sku: sku.into(),
                        category: Some(category.into()),
                        qty,
                        unit_price: cents(price),
                        discount: cents(discount),
                    });
                }
                let shipping = order.shipping.then_some(499);
                let extra = match order.tax {
                    15 => -1,
                    tax => i64::from(tax) * 37,
                };
                let total = sum + shipping.unwrap_or(0) + extra;
                let hold = order.hold.map(|_| target_ref(order.member % 2 == 0));
                // Mostly the member the hold is for.
                let member = match hold_owner {
                    Some(id) if order.member % 4 != 0 => MemberRef::Id(id),
                    _ => member_ref(order.member),
                };
                let points = if order.pay_points == ALL || order.pay_points % 16 == 15 {
                    // As much as the program lets this order pay with points.
                    let cap = if merchant == DEMO {
                        total / 2
                    } else {
                        total / 5
                    };
                    available(ledger, merchant, &member).min(cap)
                } else {
                    pick(PAY_POINTS, order.pay_points)
                };
                let pay = if hold.is_some() && order.pay_points % 4 != 0 {
                    Payment::default()
                } else {
                    Payment {
                        points,
                        credit: cents(pick(PAY_CREDIT_CENTS, order.pay_credit)),
                    }
                };
                let purchase = Purchase {
                    member,
                    store: pick(STORES, order.store).map(str::to_string),
                    channel: Some(pick(CHANNELS, order.channel).into()),
                    lines,
                    total: cents(total),
                    shipping: shipping.map(cents),
                    pay,
                    hold,
                    rewards: order
                        .rewards
                        .iter()
                        .map(|r| pick(REWARDS, *r).to_string())
                        .collect(),
                    codes: Vec::new(),
                };
                if order.quote {
                    Body::Quote(purchase)
                } else {
                    Body::Purchase(purchase)
                }
            }
            Op::Return {
                pick: which, lines, ..
            } => {
                let skus = self
                    .purchases
                    .iter()
                    .find(|(m, k, _)| *m == merchant && Some(k) == target.as_ref())
                    .map(|(_, _, skus)| skus.clone())
                    .unwrap_or_else(|| vec!["LATTE".into()]);
                let lines = lines.as_ref().map(|lines| {
                    lines
                        .iter()
                        .map(|(line, qty)| ReturnLine {
                            sku: if *line == 255 {
                                "NOT-BOUGHT".into()
                            } else {
                                pick(&skus, *line)
                            },
                            qty: i64::from(*qty),
                        })
                        .collect()
                });
                Body::Return(Return {
                    order: target_ref(which % 2 == 0),
                    lines,
                })
            }
            Op::Hold {
                member,
                points,
                credit,
                ..
            } => {
                self.holds.push((merchant, key.clone()));
                // Mostly the member who has points.
                let member = if member % 4 == 0 {
                    member_ref(*member / 4)
                } else {
                    MemberRef::Card("C1".into())
                };
                let points = match *points {
                    ALL => available(ledger, merchant, &member),
                    points => pick(HOLD_POINTS, points),
                };
                Body::Hold(Hold {
                    member,
                    points,
                    credit: cents(pick(HOLD_CREDIT_CENTS, *credit)),
                })
            }
            Op::Capture {
                pick: which,
                points,
                credit,
            } => Body::Capture(Capture {
                hold: target_ref(which % 2 == 0),
                points: points.map(|p| pick(&[0, 20, 50, 100, 250, 600], p)),
                credit: credit.map(|c| cents(pick(&[0, 50, 100, 700], c))),
            }),
            Op::Release { pick: which } => Body::Release(Release {
                hold: target_ref(which % 2 == 0),
            }),
            Op::Adjust {
                member,
                points,
                credit,
                reason,
            } => {
                let member = if member % 3 == 0 {
                    member_ref(*member / 3)
                } else {
                    MemberRef::Card("C1".into())
                };
                let points = match *points {
                    ALL => -available(ledger, merchant, &member),
                    points => pick(ADJUST_POINTS, points),
                };
                let credit = match *credit {
                    ALL => -find_member(ledger, merchant, &member).map_or(0, |m| m.credit_minor),
                    credit => pick(ADJUST_CREDIT_CENTS, credit),
                };
                Body::Adjust(Adjust {
                    member,
                    points,
                    credit: cents(credit),
                    reason: pick(
                        &[
                            AdjustReason::Reward,
                            AdjustReason::Goodwill,
                            AdjustReason::Refund,
                            AdjustReason::Correction,
                        ],
                        *reason,
                    ),
                    note: (reason % 2 == 0).then(|| "property test".into()),
                })
            }
            Op::Event { member, name } => Body::Event(Event {
                member: member_ref(*member),
                name: pick(EVENTS, *name).into(),
            }),
            Op::Enroll {
                phone,
                card,
                birthday,
            } => Body::Enroll(Enroll {
                phone: phone.map(|p| {
                    pick(&["+15550001111", "+15550004444", "030 1234567", "12"], p).into()
                }),
                card: card.map(|c| pick(&["C1", "C2", "C4", "C5", "K1"], c).into()),
                birthday: birthday.map(|(m, d)| {
                    if m % 13 == 12 {
                        "02-29".to_string()
                    } else {
                        format!("{:02}-{:02}", 1 + m % 12, 1 + d % 28)
                    }
                }),
                tags: Vec::new(),
            }),
            Op::Link { member, alias: a } => Body::Link(Link {
                member: member_ref(*member),
                alias: alias(*a),
            }),
            Op::IssueCards { card } => Body::IssueCards(IssueCards {
                count: 0,
                prefix: None,
                cards: vec![pick(&["K1", "K2", "C4"], *card).into()],
            }),
            Op::LoadProgram { variant, stale } => {
                let current = *self.versions.entry(merchant).or_insert(1);
                let version = if *stale { current } else { current + 1 };
                self.versions.insert(merchant, version);
                let program = if merchant == CLAMP {
                    clamp_program(version, *variant)
                } else {
                    demo_program(version)
                };
                Body::LoadProgram(LoadProgram { program })
            }
            Op::Duplicate { .. } | Op::Conflict { .. } | Op::Story { .. } => {
                unreachable!("handled by build and drive")
            }
        };
        Command {
            merchant: merchant.into(),
            origin,
            key,
            at,
            program_version: None,
            body,
        }
    }
}

/// Every sequence starts with one known member per merchant (card C1, phone +15550001111)
/// who has points available and store credit, so that redemptions and holds can succeed.
fn prelude() -> Vec<Command> {
    let mut commands = Vec::new();
    for merchant in [DEMO, CLAMP] {
        let key = |txn: &str| IdemKey::Admin {
            admin: "setup".into(),
            txn: format!("{merchant}-{txn}"),
        };
        let command = |key: IdemKey, body: Body| Command {
            merchant: merchant.into(),
            origin: Origin::Admin("setup".into()),
            key,
            at: start(),
            program_version: None,
            body,
        };
        commands.push(command(
            key("enroll"),
            Body::Enroll(Enroll {
                phone: Some("+15550001111".into()),
                card: Some("C1".into()),
                birthday: Some("01-21".into()),
                tags: Vec::new(),
            }),
        ));
        commands.push(command(
            key("adjust"),
            Body::Adjust(Adjust {
                member: MemberRef::Card("C1".into()),
                points: 1_000,
                credit: cents(2_000),
                reason: AdjustReason::Goodwill,
                note: None,
            }),
        ));
    }
    commands
}

/// Something that applies commands to a ledger (ticking first when work is due).
trait Runner {
    fn ledger(&self) -> &Ledger;
    fn apply(&mut self, command: &Command, now: Timestamp) -> Result<CommandResult, TestCaseError>;
    /// Ticks every merchant to the final time.
    fn finish(&mut self, now: Timestamp) -> Result<(), TestCaseError>;
}

/// Turns the steps into commands one at a time, each built against the state it meets.
fn drive(steps: &[Step], runner: &mut impl Runner) -> Result<(), TestCaseError> {
    let mut builder = Builder::default();
    let now = start();
    for command in prelude() {
        let result = runner.apply(&command, now)?;
        if result.applied().is_none() {
            return Err(TestCaseError::fail(format!(
                "the prelude was not applied: {}",
                result.to_json_line()
            )));
        }
        builder.commands.push(command);
    }
    let mut now = now;
    let mut queue: std::collections::VecDeque<(Step, bool)> =
        steps.iter().map(|step| (step.clone(), false)).collect();
    while let Some((step, follow_up)) = queue.pop_front() {
        if let Op::Story {
            order,
            wait_hours,
            spend,
            lines,
        } = &step.op
        {
            let spend = if spend % 2 == 0 {
                Op::Adjust {
                    member: 1,
                    points: ALL,
                    credit: if spend % 4 == 0 { ALL } else { 0 },
                    reason: *spend,
                }
            } else {
                Op::Hold {
                    member: 1,
                    points: ALL,
                    credit: 0,
                    then: None,
                }
            };
            let story = [
                (step.advance, Op::Purchase(order.clone())),
                (i64::from(*wait_hours) * 3_600, spend),
                (
                    i64::from(*wait_hours % 300),
                    Op::Return {
                        pick: 1,
                        any_command: false,
                        lines: lines.clone(),
                    },
                ),
            ];
            for (advance, op) in story.into_iter().rev() {
                let next = Step {
                    advance,
                    when: When::Now,
                    op,
                    ..step.clone()
                };
                queue.push_front((next, true));
            }
            continue;
        }
        let step = &step;
        // A payment in progress is finished (or given up) soon after the hold, mostly.
        let advance = match &step.op {
            _ if follow_up => step.advance,
            Op::Capture { .. } | Op::Release { .. } | Op::Purchase(Order { hold: Some(_), .. }) => {
                step.advance % 90
            }
            _ => step.advance,
        };
        now += TimeDelta::seconds(advance);
        let command = builder.build(step, now, runner.ledger());
        let result = runner.apply(&command, now)?;
        builder.record(&command, &result);
        if let Op::Hold {
            then: Some((delay, op)),
            ..
        } = &step.op
        {
            let next = Step {
                advance: i64::from(*delay),
                when: When::Now,
                op: (**op).clone(),
                ..step.clone()
            };
            queue.push_front((next, true));
        }
    }
    runner.finish(now)
}

fn new_ledger() -> Ledger {
    let mut ledger = Ledger::new();
    ledger
        .install_program(&demo_program(1), start())
        .expect("the demo program is valid");
    ledger
        .install_program(&clamp_program(1, 0), start())
        .expect("the clamp program is valid");
    ledger
}

/// What the checker knows of one applied purchase, to follow its returns.
struct OrderModel {
    /// (sku, units not yet returned)
    lines: Vec<(String, i64)>,
    /// Per rule: points and cashback the purchase earned, and what returns took back so far.
    earned: Vec<(String, i64, Decimal)>,
    taken: Vec<(String, i64, Decimal)>,
    redeemed: (i64, Decimal),
    refunded: (i64, Decimal),
}

fn add_to(list: &mut Vec<(String, i64, Decimal)>, rule: &str, points: i64, cashback: Decimal) {
    match list.iter_mut().find(|(r, _, _)| r == rule) {
        Some((_, p, c)) => {
            *p += points;
            *c += cashback;
        }
        None => list.push((rule.to_string(), points, cashback)),
    }
}

/// Applies commands and checks every property after each of them.
struct Checked {
    ledger: Ledger,
    /// (merchant, member id) -> (points, credit in minor units) summed from the journal.
    sums: HashMap<(String, u64), (i64, i64)>,
    /// What the engine must remember: key -> (the command, its first result).
    remembered: HashMap<(String, IdemKey), (Command, CommandResult)>,
    /// Applied purchases and holds, by key.
    orders: HashMap<(String, IdemKey), OrderModel>,
    holds: HashMap<(String, IdemKey), (i64, i64)>,
    /// (merchant, member, lot) -> points, summed from the lot slices entries record.
    lots: HashMap<(String, u64, u32), i64>,
    /// Members that have had a debt: new points pay it off without reaching a lot, so their
    /// lots are not checked against the slices.
    had_debt: std::collections::HashSet<(String, u64)>,
    /// Every command applied, with the engine time, to reproduce a failure.
    history: Vec<String>,
}

fn fail(message: String) -> Result<(), TestCaseError> {
    Err(TestCaseError::fail(message))
}

fn minor(amount: Decimal) -> i64 {
    tally_engine::money::to_minor(amount, 2).expect("USD amounts")
}

impl Checked {
    fn new() -> Checked {
        Checked {
            ledger: new_ledger(),
            sums: HashMap::new(),
            remembered: HashMap::new(),
            orders: HashMap::new(),
            holds: HashMap::new(),
            lots: HashMap::new(),
            had_debt: Default::default(),
            history: Vec::new(),
        }
    }

    fn members(&self, merchant: &str) -> Vec<Member> {
        self.ledger
            .merchant(merchant)
            .map(|m| m.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn apply_checked(
        &mut self,
        command: &Command,
        now: Timestamp,
    ) -> Result<CommandResult, TestCaseError> {
        let line = command.to_json_line();
        self.history
            .push(format!("now={} {line}", now.to_rfc3339()));
        let quote = match &command.body {
            Body::Purchase(order) => Some(self.quote_first(command, order, now, &line)?),
            _ => None,
        };
        let digest_before = self.ledger.digest();
        let before = self.members(&command.merchant);
        let clock_before = self.ledger.merchant(&command.merchant).map(|m| m.clock);
        let result = self.ledger.apply(command, now);
        let written = self.ledger.take_entries();
        let digest_after = self.ledger.digest();
        for entry in &written {
            let sum = self
                .sums
                .entry((entry.merchant.to_string(), entry.member))
                .or_default();
            match entry.wallet {
                Wallet::Points => sum.0 += entry.amount,
                Wallet::Credit => sum.1 += entry.amount,
            }
            for slice in &entry.lots {
                let key = (entry.merchant.to_string(), entry.member, slice.lot);
                *self.lots.entry(key).or_default() += entry.amount.signum() * slice.points;
            }
        }
        let unchanged = digest_before == digest_after && written.is_empty();
        if command.kind() == CommandKind::Tick {
            self.check_tick(command, now, &result, clock_before)?;
        } else {
            self.check_command(command, now, &line, &result, unchanged, written.len())?;
        }
        if let Some(quote) = quote {
            check_quote(&quote, &result, &line)?;
        }
        self.check_books(&line)?;
        self.check_lots(&command.merchant, &line)?;
        self.check_members(command, &line, &before)?;
        Ok(result)
    }

    /// The same order as a quote, just before: it must change nothing.
    fn quote_first(
        &mut self,
        command: &Command,
        order: &Purchase,
        now: Timestamp,
        line: &str,
    ) -> Result<CommandResult, TestCaseError> {
        let quote = Command {
            body: Body::Quote(order.clone()),
            ..command.clone()
        };
        let digest = self.ledger.digest();
        let result = self.ledger.apply(&quote, now);
        let written = self.ledger.take_entries();
        if self.ledger.digest() != digest || !written.is_empty() {
            return Err(TestCaseError::fail(format!(
                "the quote of this order changed the state: {line}"
            )));
        }
        Ok(result)
    }

    fn check_tick(
        &self,
        command: &Command,
        now: Timestamp,
        result: &CommandResult,
        clock_before: Option<Timestamp>,
    ) -> Result<(), TestCaseError> {
        if result.applied().is_none() {
            return fail(format!("an engine tick was not applied: {result:?}"));
        }
        // At a local month start every member is re-evaluated: none is below the tier its
        // counters earn, and one holding a tier whose window has a boundary now holds exactly
        // the tier it earns.
        let merchant = self.ledger.merchant(&command.merchant).expect("ticked");
        let program = merchant.program();
        let month = local_month(program, now);
        let month_started = clock_before.is_some_and(|clock| local_month(program, clock) < month);
        if month_started && program.reevaluates_at_month_start {
            for member in &merchant.members {
                let earned = qualifying(program, &member.counters, now);
                let must_equal = member.tier.is_some_and(|t| {
                    let tier = &program.tiers[t];
                    let boundary = match tier.window {
                        Window::Lifetime => false,
                        Window::CalendarYear => month.rem_euclid(12) == 0,
                        Window::RollingMonths(_) => true,
                    };
                    boundary && tier.downgrade == Downgrade::Window || !tier.active
                });
                if member.tier < earned || must_equal && member.tier != earned {
                    return fail(format!(
                        "{} member {}: after the month start at {now} the tier is {:?}, its \
                         counters earn {:?}: {:?}",
                        command.merchant, member.id, member.tier, earned, member.counters
                    ));
                }
            }
        }
        // Everything due by now is done.
        for member in self.members(&command.merchant) {
            let late_lot = member.lots.iter().find(|lot| {
                lot.expires_at.is_some_and(|at| at <= now) || lot.pending && lot.available_at <= now
            });
            let late_hold = member.open_holds.iter().find(|hold| hold.deadline <= now);
            if late_lot.is_some() || late_hold.is_some() {
                return fail(format!(
                    "{} member {}: after a tick to {now} work is still due: lot {late_lot:?}, \
                     hold {late_hold:?}",
                    command.merchant, member.id
                ));
            }
        }
        if let Some(due) = self
            .ledger
            .due_at(&command.merchant)
            .filter(|due| *due <= now)
        {
            return fail(format!(
                "{}: after a tick to {now} work is still due at {due}",
                command.merchant
            ));
        }
        Ok(())
    }

    fn check_command(
        &mut self,
        command: &Command,
        now: Timestamp,
        line: &str,
        result: &CommandResult,
        unchanged: bool,
        written: usize,
    ) -> Result<(), TestCaseError> {
        // JSON form: every command reads back as itself.
        match parse_command_line(line) {
            Ok(again) if again == *command => {}
            other => return fail(format!("{line} does not round-trip: {other:?}")),
        }
        if result.key != command.key.to_string() || result.command != command.kind() {
            return fail(format!(
                "the result names another command: {line} => {result:?}"
            ));
        }
        // Idempotency against what the engine must remember.
        let slot = (command.merchant.clone(), command.key.clone());
        let remembered = command.kind() != CommandKind::Quote;
        match self.remembered.get(&slot).filter(|_| remembered) {
            Some((first, first_result)) if first == command => {
                match &result.status {
                    Status::Duplicate { first } if **first == *first_result => {}
                    _ => {
                        return fail(format!(
                            "an exact repeat of an applied command is not a duplicate of its \
                             first result:\n  {line}\n  got {}",
                            result.to_json_line()
                        ))
                    }
                }
                if !unchanged {
                    return fail(format!("a duplicate changed the state: {line}"));
                }
            }
            Some(_) => {
                if result.reason() != Some(Reason::Conflict) {
                    return fail(format!(
                        "a reused key with other content is not a conflict:\n  {line}\n  got {}",
                        result.to_json_line()
                    ));
                }
            }
            None => {
                if let Status::Duplicate { .. } = result.status {
                    return fail(format!("duplicate for a key never applied before: {line}"));
                }
                if remembered && result.applied().is_some() {
                    self.remembered
                        .insert(slot.clone(), (command.clone(), result.clone()));
                }
            }
        }
        if let Status::Rejected { message, .. } = &result.status {
            if !unchanged {
                return fail(format!(
                    "a rejected command changed the state ({written} entries written):\n  \
                     {line}\n  {}",
                    result.to_json_line()
                ));
            }
            if message.trim().is_empty() {
                return fail(format!("a rejection without a message: {line}"));
            }
        }
        if command.kind() == CommandKind::Quote && !unchanged {
            return fail(format!("a quote changed the state: {line}"));
        }
        let Some(applied) = result.applied() else {
            return Ok(());
        };
        if applied.entries.len() != written {
            return fail(format!(
                "the result lists {} entries but {written} were written: {line}",
                applied.entries.len()
            ));
        }
        if let (Some(view), Some(balances), false) = (
            &applied.member,
            &applied.balances,
            command.kind() == CommandKind::Quote,
        ) {
            let members = self.members(&command.merchant);
            let member = &members[view.id as usize - 1];
            if balances.points != member.points
                || balances.available != member.available_points()
                || balances.held != member.held_points
            {
                return fail(format!(
                    "the result's balances {balances:?} differ from member {} (points {}, \
                     available {}, held {}): {line}",
                    member.id,
                    member.points,
                    member.available_points(),
                    member.held_points
                ));
            }
        }
        // A tier rises right after the command that meets it.
        if let (Some(view), Body::Purchase(_) | Body::Event(_) | Body::Enroll(_)) =
            (&applied.member, &command.body)
        {
            let merchant = self.ledger.merchant(&command.merchant).expect("applied");
            let member = &merchant.members[view.id as usize - 1];
            let earned = qualifying(merchant.program(), &member.counters, now);
            if member.tier < earned {
                return fail(format!(
                    "member {}'s counters earn tier {earned:?} but it holds {:?}: {line}",
                    member.id, member.tier
                ));
            }
        }
        match &command.body {
            Body::Purchase(order) => {
                check_order_shares(applied, line)?;
                let earned = applied
                    .rules
                    .iter()
                    .map(|r| (r.rule.to_string(), r.points, r.cashback))
                    .collect();
                let model = OrderModel {
                    lines: order
                        .lines
                        .iter()
                        .map(|l| (l.sku.to_string(), l.qty))
                        .collect(),
                    earned,
                    taken: Vec::new(),
                    redeemed: (applied.points_redeemed, applied.credit_redeemed),
                    refunded: (0, Decimal::ZERO),
                };
                self.orders.insert(slot, model);
            }
            Body::Hold(hold) => {
                self.holds.insert(slot, (hold.points, minor(hold.credit)));
            }
            Body::Return(ret) => self.check_return(command, ret, applied, line)?,
            _ => {}
        }
        Ok(())
    }

    /// A return takes back no more than the order earned and paid, per rule; once the whole
    /// order is back, exactly that.
    fn check_return(
        &mut self,
        command: &Command,
        ret: &Return,
        applied: &tally_protocol::Applied,
        line: &str,
    ) -> Result<(), TestCaseError> {
        let key = ret
            .order
            .resolve(&command.origin)
            .expect("the engine resolved it");
        let Some(order) = self.orders.get_mut(&(command.merchant.clone(), key)) else {
            return fail(format!(
                "a return of an order never applied was applied: {line}"
            ));
        };
        match &ret.lines {
            None => order.lines.iter_mut().for_each(|(_, left)| *left = 0),
            Some(lines) => {
                for returned in lines {
                    let mut qty = returned.qty;
                    for (_, left) in order.lines.iter_mut().filter(|(s, _)| *s == *returned.sku) {
                        let take = qty.min(*left);
                        *left -= take;
                        qty -= take;
                    }
                    if qty > 0 {
                        return fail(format!(
                            "a return of more than was bought was applied: {line}"
                        ));
                    }
                }
            }
        }
        for rule in &applied.rules {
            add_to(&mut order.taken, &rule.rule, -rule.points, -rule.cashback);
        }
        order.refunded.0 -= applied.points_redeemed;
        order.refunded.1 -= applied.credit_redeemed;
        let whole = order.lines.iter().all(|(_, left)| *left == 0);
        for (rule, points, cashback) in &order.taken {
            let (earned_points, earned_cashback) = order
                .earned
                .iter()
                .find(|(r, _, _)| r == rule)
                .map_or((0, Decimal::ZERO), |(_, p, c)| (*p, *c));
            let over = *points > earned_points || *cashback > earned_cashback;
            let short = whole && (*points != earned_points || *cashback != earned_cashback);
            if over || *points < 0 || *cashback < Decimal::ZERO || short {
                return fail(format!(
                    "rule {rule}: returns took back {points} points and {cashback} cashback of \
                     {earned_points} and {earned_cashback} earned (whole order back: {whole}); \
                     after {line}"
                ));
            }
        }
        let refunded = order.refunded;
        let redeemed = order.redeemed;
        if refunded.0 > redeemed.0 || refunded.1 > redeemed.1 || whole && refunded != redeemed {
            return fail(format!(
                "returns gave back {refunded:?} (points, credit) of {redeemed:?} paid (whole \
                 order back: {whole}); after {line}"
            ));
        }
        if whole {
            let missing: Vec<&str> = order
                .earned
                .iter()
                .filter(|(r, p, c)| {
                    (*p != 0 || !c.is_zero()) && !order.taken.iter().any(|(t, _, _)| t == r)
                })
                .map(|(r, _, _)| r.as_str())
                .collect();
            if !missing.is_empty() {
                return fail(format!(
                    "the whole order is back but rules {missing:?} were never taken back: {line}"
                ));
            }
        }
        Ok(())
    }

    /// Conservation of every member of every merchant.
    fn check_books(&self, line: &str) -> Result<(), TestCaseError> {
        let verified =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.ledger.verify()));
        if let Err(panic) = verified {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return fail(format!("Ledger::verify failed after {line}: {message}"));
        }
        for merchant in self.ledger.merchants() {
            let allow = merchant.program().negative_balance == NegativeBalance::Allow;
            for member in &merchant.members {
                let key = (merchant.name.to_string(), member.id);
                let (points, credit) = self.sums.get(&key).copied().unwrap_or_default();
                let whose = format!("{} member {}", merchant.name, member.id);
                if (points, credit) != (member.points, member.credit_minor) {
                    return fail(format!(
                        "{whose}: entries sum to {points} points and {credit} credit, balances \
                         are {} and {} (after {line})",
                        member.points, member.credit_minor
                    ));
                }
                if member.available_points() < 0 && member.debt_points == 0 {
                    return fail(format!(
                        "{whose}: {} points available without any debt (after {line})",
                        member.available_points()
                    ));
                }
                if !allow
                    && (member.debt_points != 0 || member.points < 0 || member.credit_minor < 0)
                {
                    return fail(format!(
                        "{whose} under clamp: points {}, debt {}, credit {} (after {line})",
                        member.points, member.debt_points, member.credit_minor
                    ));
                }
                // What is held is what the member's open holds reserved.
                let (held, held_credit) = member
                    .open_holds
                    .iter()
                    .filter_map(|open| {
                        self.holds
                            .get(&(merchant.name.to_string(), open.key.to_idem_key()))
                    })
                    .fold((0, 0), |(p, c), (hp, hc)| (p + hp, c + hc));
                if (held, held_credit) != (member.held_points, member.held_credit_minor) {
                    return fail(format!(
                        "{whose}: holds {:?} reserve {held} points and {held_credit} credit, the \
                         member shows {} and {} (after {line})",
                        member.open_holds, member.held_points, member.held_credit_minor
                    ));
                }
                let totals = member.counters.lifetime;
                if totals.points_earned < 0 || totals.amount_spent_minor < 0 || totals.orders < 0 {
                    return fail(format!(
                        "{whose}: lifetime counters went negative: {totals:?} (after {line})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every lot holds what the slices of its entries add up to: each spend, hold, release,
    /// expiry and reversal names the lots it took from or gave back to, truthfully.
    fn check_lots(&mut self, merchant: &str, line: &str) -> Result<(), TestCaseError> {
        let members = self.members(merchant);
        for member in &members {
            let whose = (merchant.to_string(), member.id);
            if member.debt_points > 0 {
                self.had_debt.insert(whose.clone());
            }
            if self.had_debt.contains(&whose) {
                continue;
            }
            for ((m, id, lot), points) in &self.lots {
                if m != merchant || *id != member.id {
                    continue;
                }
                let remaining = member
                    .lots
                    .iter()
                    .find(|l| l.id == *lot)
                    .map_or(0, |l| l.remaining);
                if remaining != *points {
                    return fail(format!(
                        "{merchant} member {}: lot {lot} holds {remaining} points, its entries' \
                         slices add up to {points} (after {line})",
                        member.id
                    ));
                }
            }
            if let Some(lot) = member.lots.iter().find(|l| {
                !self
                    .lots
                    .contains_key(&(merchant.to_string(), member.id, l.id))
            }) {
                return fail(format!(
                    "{merchant} member {}: lot {} was never named by an entry (after {line})",
                    member.id, lot.id
                ));
            }
        }
        Ok(())
    }

    /// Per member: a debt only comes from a return; a tier only falls at a month start.
    fn check_members(
        &self,
        command: &Command,
        line: &str,
        before: &[Member],
    ) -> Result<(), TestCaseError> {
        let kind = command.kind();
        for member in self.members(&command.merchant) {
            let Some(old) = before.iter().find(|m| m.id == member.id) else {
                continue;
            };
            if member.debt_points > old.debt_points && kind != CommandKind::Return {
                return fail(format!(
                    "member {}'s debt grew from {} to {} by a {}: {line}",
                    member.id,
                    old.debt_points,
                    member.debt_points,
                    kind.name()
                ));
            }
            let may_fall = matches!(kind, CommandKind::Tick | CommandKind::LoadProgram);
            if member.tier < old.tier && !may_fall {
                return fail(format!(
                    "member {}'s tier fell from {:?} to {:?} by a {}: {line}",
                    member.id,
                    old.tier,
                    member.tier,
                    kind.name()
                ));
            }
        }
        Ok(())
    }
}

/// The local month of `at` in the program's zone, as `year * 12 + month0`.
fn local_month(program: &Program, at: Timestamp) -> i32 {
    use chrono::Datelike;
    let local = at.with_timezone(&program.zone);
    local.year() * 12 + local.month0() as i32
}

/// The highest active tier whose thresholds the counters meet over the tier's window at
/// `now` (as the documentation states it, computed here independently of the engine).
fn qualifying(program: &Program, counters: &Counters, now: Timestamp) -> Option<usize> {
    let month = local_month(program, now);
    program
        .tiers
        .iter()
        .enumerate()
        .rev()
        .find(|(_, tier)| {
            let totals = match tier.window {
                Window::Lifetime => counters.lifetime,
                Window::CalendarYear => counters.sum(month - month.rem_euclid(12), month),
                Window::RollingMonths(n) => counters.sum(month - n as i32 + 1, month),
            };
            let checks: Vec<bool> = [
                tier.points_earned.map(|min| totals.points_earned >= min),
                tier.amount_spent_minor
                    .map(|min| totals.amount_spent_minor >= min),
                tier.orders.map(|min| totals.orders >= i64::from(min)),
            ]
            .into_iter()
            .flatten()
            .collect();
            let met = checks.is_empty()
                || match tier.combine {
                    Combine::Any => checks.iter().any(|met| *met),
                    Combine::All => checks.iter().all(|met| *met),
                };
            tier.active && met
        })
        .map(|(index, _)| index)
}

/// Rules selecting lines that give points once per order (not shared over lines).
const PER_ORDER_RULES: &[&str] = &["visit", "downtown_early_bird", "big_basket"];

/// An order's points and cashback are shared over its lines without loss, and its accrual
/// is one lot.
fn check_order_shares(applied: &tally_protocol::Applied, line: &str) -> Result<(), TestCaseError> {
    let shared_points: i64 = applied
        .rules
        .iter()
        .filter(|r| !PER_ORDER_RULES.contains(&&*r.rule.to_string()))
        // Promotion points belong to the order, not to a line.
        .filter(|r| !r.rule.starts_with("promotion:"))
        .map(|r| r.points)
        .sum();
    let line_points: i64 = applied.lines.iter().map(|l| l.points).sum();
    let rule_cashback: Decimal = applied.rules.iter().map(|r| r.cashback).sum();
    let line_cashback: Decimal = applied.lines.iter().map(|l| l.cashback).sum();
    if shared_points != line_points || rule_cashback != line_cashback {
        return fail(format!(
            "the lines share {line_points} points and {line_cashback} cashback, the rules \
             {shared_points} and {rule_cashback}: {line}"
        ));
    }
    let lots: Vec<u32> = applied
        .entries
        .iter()
        .filter(|e| e.kind == tally_protocol::EntryKind::Accrual)
        .flat_map(|e| e.lots.iter().map(|slice| slice.lot))
        .collect();
    if lots.windows(2).any(|pair| pair[0] != pair[1]) {
        return fail(format!(
            "an order's accrual went to several lots {lots:?}: {line}"
        ));
    }
    Ok(())
}

/// A quote made just before a purchase predicts it: what is earned by each rule and line,
/// the discounts and the payment, or the same rejection.
fn check_quote(
    quote: &CommandResult,
    purchase: &CommandResult,
    line: &str,
) -> Result<(), TestCaseError> {
    let differs = |what: &str| {
        fail(format!(
            "the quote just before the purchase differs in {what}:\n  {line}\n  quote    \
             {}\n  purchase {}",
            quote.to_json_line(),
            purchase.to_json_line()
        ))
    };
    match (&quote.status, &purchase.status) {
        // A repeat of a purchase is answered from memory; a quote is evaluated afresh.
        (_, Status::Duplicate { .. }) => Ok(()),
        (_, Status::Rejected { reason, .. }) if *reason == Reason::Conflict => Ok(()),
        (Status::Rejected { reason: a, .. }, Status::Rejected { reason: b, .. }) => {
            if a == b {
                Ok(())
            } else {
                differs("the reason of the rejection")
            }
        }
        (Status::Applied(q), Status::Applied(p)) => {
            let enrolled = p.member.as_ref().is_some_and(|m| m.enrolled);
            if q.rules != p.rules {
                differs("the points per rule")
            } else if q.lines != p.lines {
                differs("the points per line")
            } else if q.discounts != p.discounts {
                differs("the discounts")
            } else if (q.points_redeemed, q.credit_redeemed, q.cashback)
                != (p.points_redeemed, p.credit_redeemed, p.cashback)
            {
                differs("the payment or the cashback")
            } else if p.points_earned < q.points_earned
                || !enrolled && p.points_earned != q.points_earned
            {
                differs("the points earned")
            } else {
                Ok(())
            }
        }
        _ => differs("whether it is applied"),
    }
}

/// Applies commands with no checks, keeping every result (ticks included) in JSON, and
/// counting what happened for the coverage check.
struct Plain {
    ledger: Ledger,
    results: Vec<String>,
    seen: HashMap<String, u64>,
}

impl Plain {
    fn new() -> Plain {
        Plain {
            ledger: new_ledger(),
            results: Vec::new(),
            seen: HashMap::new(),
        }
    }

    fn count(&mut self, label: &str, yes: bool) {
        *self.seen.entry(label.to_string()).or_default() += u64::from(yes);
    }

    fn tick(&mut self, merchant: &str, now: Timestamp) {
        if self.ledger.due_at(merchant).is_some_and(|due| due <= now) {
            let result = self.ledger.apply(&tick_command(merchant, now), now);
            self.ledger.take_entries();
            let summary = result
                .applied()
                .and_then(|a| a.tick.clone())
                .unwrap_or_default();
            self.count("tick:expired", summary.points_expired > 0);
            self.count("tick:released", summary.points_released > 0);
            self.count("tick:lapsed", summary.holds_lapsed > 0);
            self.count("tick:birthday", summary.birthday_bonuses > 0);
            self.count("tick:tier_change", summary.tier_changes > 0);
            self.results.push(result.to_json_line());
        }
    }

    /// The members of both merchants.
    fn members(&self) -> Vec<Vec<Member>> {
        [DEMO, CLAMP]
            .iter()
            .map(|m| {
                self.ledger
                    .merchant(m)
                    .map(|m| m.members.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl Runner for Plain {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn apply(&mut self, command: &Command, now: Timestamp) -> Result<CommandResult, TestCaseError> {
        self.tick(&command.merchant, now);
        let result = self.ledger.apply(command, now);
        self.ledger.take_entries();
        self.results.push(result.to_json_line());
        let kind = command.kind();
        let label = match &result.status {
            Status::Applied(_) => format!("{}:applied", kind.name()),
            Status::Duplicate { .. } => "duplicate".to_string(),
            Status::Rejected { reason, .. } => format!("rejected:{}", reason.code()),
        };
        self.count(&label, true);
        if let Some(applied) = result.applied() {
            let is = |k: CommandKind| kind == k;
            self.count("written_off", applied.points_written_off > 0);
            self.count("credit_written_off", !applied.credit_written_off.is_zero());
            self.count(
                "return:refund",
                is(CommandKind::Return) && applied.points_redeemed < 0,
            );
            self.count(
                "return:partial",
                matches!(&command.body, Body::Return(r) if r.lines.is_some()),
            );
            self.count(
                "purchase:with_hold",
                matches!(&command.body, Body::Purchase(p) if p.hold.is_some()),
            );
            self.count(
                "purchase:with_points",
                is(CommandKind::Purchase) && applied.points_redeemed > 0,
            );
            self.count(
                "purchase:with_reward",
                is(CommandKind::Purchase) && !applied.discounts.is_empty(),
            );
            self.count(
                "enrolled_on_the_spot",
                applied.member.as_ref().is_some_and(|m| m.enrolled)
                    && !is(CommandKind::Enroll)
                    && !is(CommandKind::Quote),
            );
            self.count(
                "tier:rise",
                applied.tier.as_ref().is_some_and(|t| t.before != t.after),
            );
            let debt = self
                .ledger
                .merchants()
                .any(|m| m.members.iter().any(|member| member.debt_points > 0));
            self.count("debt", debt);
        }
        Ok(result)
    }

    fn finish(&mut self, now: Timestamp) -> Result<(), TestCaseError> {
        for merchant in [DEMO, CLAMP] {
            self.tick(merchant, now);
        }
        Ok(())
    }
}

impl Runner for Checked {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn apply(&mut self, command: &Command, now: Timestamp) -> Result<CommandResult, TestCaseError> {
        if self
            .ledger
            .due_at(&command.merchant)
            .is_some_and(|due| due <= now)
        {
            self.apply_checked(&tick_command(&command.merchant, now), now)?;
        }
        self.apply_checked(command, now)
    }

    fn finish(&mut self, now: Timestamp) -> Result<(), TestCaseError> {
        for merchant in [DEMO, CLAMP] {
            if self.ledger.due_at(merchant).is_some_and(|due| due <= now) {
                self.apply_checked(&tick_command(merchant, now), now)?;
            }
        }
        Ok(())
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(96);
    ProptestConfig {
        cases,
        // Failures are reported with the shrunk input; nothing is written next to the tests.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Conservation, idempotency, rejections, quotes, returns, holds, time-driven work and
    /// available points, after every command and every engine tick.
    #[test]
    fn every_command_keeps_the_books(steps in steps()) {
        let mut checked = Checked::new();
        drive(&steps, &mut checked).map_err(|error| {
            TestCaseError::fail(format!(
                "{error}\nthe commands applied (engine time, command):\n{}",
                checked.history.join("\n")
            ))
        })?;
    }

    /// The same steps on two fresh ledgers give the same commands, the same results and the
    /// same state.
    #[test]
    fn the_same_commands_give_the_same_state(steps in steps()) {
        let (mut a, mut b) = (Plain::new(), Plain::new());
        drive(&steps, &mut a)?;
        drive(&steps, &mut b)?;
        for (i, (x, y)) in a.results.iter().zip(&b.results).enumerate() {
            prop_assert_eq!(x, y, "result {} differs", i);
        }
        prop_assert_eq!(a.results.len(), b.results.len());
        prop_assert_eq!(a.members(), b.members());
        prop_assert_eq!(a.ledger.digest(), b.ledger.digest());
    }
}

/// The generator reaches what the properties are about: without this a change to the
/// strategy could quietly stop producing returns, holds that lapse, expiries or duplicates.
#[test]
fn the_generator_reaches_every_kind_of_work() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let rng = TestRng::deterministic_rng(RngAlgorithm::ChaCha);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut seen: HashMap<String, u64> = HashMap::new();
    for _ in 0..64 {
        let steps = steps().new_tree(&mut runner).expect("a tree").current();
        let mut plain = Plain::new();
        drive(&steps, &mut plain).expect("no checks to fail");
        for (label, count) in plain.seen {
            *seen.entry(label).or_default() += count;
        }
    }
    let wanted = [
        "purchase:applied",
        "quote:applied",
        "return:applied",
        "hold:applied",
        "capture:applied",
        "release:applied",
        "adjust:applied",
        "event:applied",
        "enroll:applied",
        "link:applied",
        "issue_cards:applied",
        "load_program:applied",
        "duplicate",
        "rejected:conflict",
        "rejected:insufficient_points",
        "rejected:hold_closed",
        "rejected:return_exceeds_order",
        "rejected:unknown_order",
        "rejected:stale_event",
        "rejected:invalid",
        "tick:expired",
        "tick:released",
        "tick:lapsed",
        "tick:birthday",
        "written_off",
        "credit_written_off",
        "tick:tier_change",
        "return:refund",
        "return:partial",
        "purchase:with_hold",
        "purchase:with_points",
        "purchase:with_reward",
        "enrolled_on_the_spot",
        "tier:rise",
        "debt",
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|label| seen.get(*label).copied().unwrap_or(0) == 0)
        .collect();
    assert!(
        missing.is_empty(),
        "the generator never reached {missing:?}; it reached {seen:?}"
    );
    if std::env::var("SHOW_COVERAGE").is_ok() {
        let mut seen: Vec<_> = seen.into_iter().collect();
        seen.sort();
        println!("{seen:#?}");
    }
}
