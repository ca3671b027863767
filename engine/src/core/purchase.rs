//! Orders. A purchase is first *planned* — every limit checked and every point computed
//! from the state without changing it (that plan is also the answer to `quote`) — and only
//! then committed. Stages: lines, rewards (discounts), payment and limits, eligible amounts,
//! earning rules. Promotions sit between rewards and payment (`promotions.rs`): discounts are
//! decided before accrual, so points are earned on what is paid; their points come after the
//! earning rules.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tally_protocol::{
    Applied, Discount, EntryKind, IdemKey, LineEarning, Name, Purchase, Reason, RuleEarning, Wallet,
};

use super::encode::{encode_into, Encoder};
use super::holds;
use super::intern::{self, NameTable};
use super::member::{Slice, Totals};
use super::members::{debit_points, filter_holds, materialize, resolve, Who};
use super::packed::Packed;
use super::promotions::{self, OrderFacts, OrderPromotions, PromotionRecord};
use super::time::expiry_of;
use super::{finish_member, reject, tiers, Books, Ctx, Merchant, Record, Rejection};
use super::{
    MAX_LINES_PER_ORDER, MAX_POINTS, MAX_QTY_PER_LINE, MAX_REWARDS_PER_ORDER, ORDER_MINOR_MAX,
};
use crate::money::{div_toward_zero, from_minor, points_value_minor, to_minor, RATE_SCALE};
use crate::program::{Award, Program, RewardAction, RuleMask};

const DEFAULT_CHANNEL: &str = "in_store";
const MAX_NAME_LEN: usize = 128;

/// What a return needs to know about a purchase, as it was when it was applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderRecord {
    pub member: u32,
    pub month: i32,
    pub total_minor: i64,
    pub lines: Vec<RecordedLine>,
    /// The rules the order earned from, named once: `LineEarned` refers to them by position.
    #[serde(
        serialize_with = "super::intern::numbers",
        deserialize_with = "super::intern::numbered_list"
    )]
    pub rules: Vec<Name>,
    /// Per line and rule: what a return takes back, by the values recorded here.
    pub earnings: Vec<LineEarned>,
    /// Points given once per order (`per_order` rules), taken back when the order no longer
    /// qualifies.
    pub order_points: Vec<OrderPoints>,
    /// Points and credit the order was paid with (rewards included), and the lots they came from.
    pub paid_points: i64,
    pub paid_credit_minor: i64,
    pub paid_slices: Vec<Slice>,
    /// The lot the order's own points went into.
    pub own_lot: Option<u32>,
    /// Sum of line amounts after discounts: what "value returned" is measured against.
    pub value_minor: i64,
    /// What counted towards the member's spend.
    pub spent_minor: i64,
    pub returned_value_minor: i64,
    pub points_refunded: i64,
    pub credit_refunded_minor: i64,
    pub whole_returned: bool,
    /// Promotions the order got, for a return to re-check.
    pub promotions: Vec<PromotionRecord>,
}

/// An order record, packed, its names numbered in its merchant's `NameTable`: packed and
/// unpacked only with that table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct PackedOrder(Packed<OrderRecord>);

impl PackedOrder {
    /// Asks for the record's first bytes ahead of a read (see `prefetch`).
    pub fn ask_for_bytes(&self) {
        self.0.ask_for_bytes();
    }

    /// Written field by field, not through serde: packing an order record was a tenth of a
    /// purchase, and serde's path lent the name table to its hooks through a thread-local,
    /// name by name. `packs_as_serde_would` checks the bytes against `pack_by_serde`.
    pub fn pack(names: &mut NameTable, record: &OrderRecord) -> PackedOrder {
        PackedOrder(Packed::written_by(|out| encode_order(names, record, out)))
    }

    #[cfg(test)]
    pub fn pack_by_serde(names: &mut NameTable, record: &OrderRecord) -> PackedOrder {
        PackedOrder(intern::numbering(names, || Packed::pack(record)))
    }

    pub fn unpack(&self, names: &mut NameTable) -> OrderRecord {
        intern::numbering(names, || self.0.unpack())
    }

    /// The order's member, the record's first field, read alone.
    pub fn member(&self) -> u32 {
        self.0.leading()
    }

    /// A record as checkpoint formats 1 to 3 kept it, names written out: only to be
    /// `renumbered` once the merchant's table is at hand.
    pub fn with_names_written_out(record: &OrderRecord) -> PackedOrder {
        PackedOrder(Packed::pack(record))
    }

    /// This record, read as formats 1 to 3 wrote it, with its names numbered into `names`.
    pub fn renumbered(&self, names: &mut NameTable) -> bincode::Result<PackedOrder> {
        let record: OrderRecord = self.0.decode_as()?;
        Ok(PackedOrder::pack(names, &record))
    }

    #[cfg(test)]
    pub fn bytes(&self) -> &[u8] {
        self.0.bytes()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordedLine {
    #[serde(
        serialize_with = "super::intern::number",
        deserialize_with = "super::intern::numbered"
    )]
    pub sku: Name,
    pub qty: i64,
    pub returned: i64,
    pub net_minor: i64,
}

/// What one line earned from one rule: (line, the rule's position in `OrderRecord::rules`,
/// points, cashback in minor units). A position, not a name: an order earns from a dozen
/// rules on a few lines, and each name once is a third of the record.
pub type LineEarned = (u32, u16, i64, i64);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderPoints {
    #[serde(
        serialize_with = "super::intern::number",
        deserialize_with = "super::intern::numbered"
    )]
    pub rule: Name,
    pub points: i64,
    pub min_total_minor: Option<i64>,
    /// Lines whose presence qualified the order (empty: any line).
    pub needs_lines: Vec<usize>,
    pub taken_back: bool,
}

pub(super) struct PlanLine<'a> {
    pub(super) sku: &'a Name,
    pub(super) qty: i64,
    pub(super) unit_minor: i64,
    pub(super) net_minor: i64,
    pub(super) free_units: i64,
    selected: RuleMask,
    points: i64,
    cashback_minor: i64,
}

struct Plan<'a> {
    who: Who,
    tier_before: Option<usize>,
    lines: Vec<PlanLine<'a>>,
    total_minor: i64,
    discounts: Vec<(Name, i64, i64)>,
    /// Points paid directly (not through a hold), and through catalog rewards.
    pay_points: i64,
    reward_points: i64,
    pay_credit_minor: i64,
    hold: Option<IdemKey>,
    hold_points: i64,
    hold_credit_minor: i64,
    /// Line amounts after discounts (S) and what they earn on (S − P).
    value_minor: i64,
    eligible_minor: i64,
    rules: Vec<(Name, i64, i64)>,
    earnings: Vec<LineEarned>,
    order_points: Vec<OrderPoints>,
    points_earned: i64,
    cashback_minor: i64,
    promotions: OrderPromotions,
}

pub fn quote(merchant: &Merchant, ctx: &Ctx, order: &Purchase) -> Result<Applied, Rejection> {
    let plan = plan(merchant, ctx, order)?;
    let mut applied = applied_of(&plan, &ctx.program);
    applied.program_version = ctx.program.version;
    let month = ctx.now_month();
    match plan.who {
        Who::Existing(index) | Who::Activate(index) => {
            let member = &merchant.members[index as usize];
            let mut counters = member.counters.clone();
            counters.add(
                plan_month(ctx),
                plan_totals(&plan),
                ctx.program.tier_months_kept,
            );
            let after = tiers::qualifying(&ctx.program, &counters, month).max(member.tier);
            applied.member = Some(tally_protocol::MemberView {
                id: member.id,
                enrolled: matches!(plan.who, Who::Activate(_)),
            });
            applied.balances = Some(super::balances(member, ctx.program.minor_units));
            applied.tier = Some(tally_protocol::TierChange {
                before: ctx.program.tier_id(member.tier),
                after: ctx.program.tier_id(after),
            });
        }
        // Not enrolled yet: id 0 says "would be enrolled by a purchase".
        Who::New(_) => {
            applied.member = Some(tally_protocol::MemberView {
                id: 0,
                enrolled: true,
            })
        }
    }
    Ok(applied)
}

pub fn purchase(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    order: &Purchase,
) -> Result<(Applied, Record), Rejection> {
    let mut plan = plan(merchant, ctx, order)?;
    let mut applied = applied_of(&plan, &ctx.program);
    let (index, enrolled, registration_bonus) = materialize(merchant, books, ctx, &plan.who);
    applied.points_earned += registration_bonus;
    let mut paid_slices = match &plan.hold {
        Some(key) => holds::capture_for_order(merchant, books, ctx, key),
        None => Vec::new(),
    };
    let order_promotions = std::mem::take(&mut plan.promotions);
    let promotion_records = promotions::commit(
        &mut merchant.promotions,
        &ctx.program,
        index,
        order_promotions,
    );
    let member = &mut merchant.members[index as usize];
    for (reward, _, points) in &plan.discounts {
        paid_slices.extend(debit_points(
            member,
            books,
            ctx,
            EntryKind::Redemption,
            *points,
            Some(reward),
        ));
    }
    paid_slices.extend(debit_points(
        member,
        books,
        ctx,
        EntryKind::Redemption,
        plan.pay_points,
        None,
    ));
    member.credit_minor -= plan.pay_credit_minor;
    books.post(
        ctx,
        member,
        Wallet::Credit,
        EntryKind::Redemption,
        -plan.pay_credit_minor,
        None,
        Vec::new(),
    );
    let own_lot = accrue(member, books, ctx, &plan);
    for (rule, _, cashback) in plan.rules.iter().filter(|(_, _, cashback)| *cashback > 0) {
        member.credit_minor += cashback;
        books.post(
            ctx,
            member,
            Wallet::Credit,
            EntryKind::Cashback,
            *cashback,
            Some(rule),
            Vec::new(),
        );
    }
    let month = plan_month(ctx);
    member
        .counters
        .add(month, plan_totals(&plan), ctx.program.tier_months_kept);
    tiers::rise(&ctx.program, member, ctx.now_month());
    // Kept, packed, as long as the order can be returned. Its lines and rules are packed
    // from the plan's: copying them into the record cost an allocation each.
    let record = OrderRecord {
        member: index,
        month,
        total_minor: plan.total_minor,
        lines: Vec::new(),
        rules: Vec::new(),
        earnings: std::mem::take(&mut plan.earnings),
        order_points: std::mem::take(&mut plan.order_points),
        paid_points: plan.reward_points + plan.pay_points + plan.hold_points,
        paid_credit_minor: plan.pay_credit_minor + plan.hold_credit_minor,
        paid_slices,
        own_lot,
        value_minor: plan.value_minor,
        spent_minor: plan.eligible_minor,
        returned_value_minor: 0,
        points_refunded: 0,
        credit_refunded_minor: 0,
        whole_returned: false,
        promotions: promotion_records,
    };
    finish_member(
        merchant,
        ctx,
        index,
        enrolled,
        plan.tier_before,
        &mut applied,
    );
    let lines = plan
        .lines
        .iter()
        .map(|line| (line.sku, line.qty, 0, line.net_minor));
    let rules = plan.rules.iter().map(|(rule, _, _)| rule);
    let packed = PackedOrder(Packed::written_by(|out| {
        encode_order_with(&mut merchant.names, &record, lines, rules, out)
    }));
    Ok((applied, Record::Order(packed)))
}

/// Writes the order's accrual entries into one new lot; returns the lot.
fn accrue(member: &mut super::Member, books: &mut Books, ctx: &Ctx, plan: &Plan) -> Option<u32> {
    let order_points: i64 = plan.rules.iter().map(|(_, points, _)| points).sum();
    if order_points == 0 {
        return None;
    }
    let expires_at = expiry_of(&ctx.program, ctx.at);
    let lot = member.add_lot(
        order_points,
        ctx.at,
        ctx.at + ctx.program.pending,
        expires_at,
        ctx.now,
    );
    for (rule, points, _) in plan.rules.iter().filter(|(_, points, _)| *points > 0) {
        let slice = Slice {
            lot,
            points: *points,
            earned_at: ctx.at,
            expires_at,
        };
        books.post(
            ctx,
            member,
            Wallet::Points,
            EntryKind::Accrual,
            *points,
            Some(rule),
            smallvec::smallvec![slice],
        );
    }
    Some(lot)
}

fn plan_month(ctx: &Ctx) -> i32 {
    ctx.at_month()
}

fn plan_totals(plan: &Plan) -> Totals {
    Totals {
        points_earned: plan.points_earned,
        amount_spent_minor: plan.eligible_minor,
        orders: 1,
    }
}

fn money(amount: Decimal, program: &Program, what: &str) -> Result<i64, Rejection> {
    money_of(amount, program, || what.to_string())
}

/// Converts an amount of the order; `what` names it in the rejection, built only then.
fn money_of(
    amount: Decimal,
    program: &Program,
    what: impl Fn() -> String,
) -> Result<i64, Rejection> {
    match to_minor(amount, program.minor_units) {
        Ok(minor) if (0..ORDER_MINOR_MAX).contains(&minor) => Ok(minor),
        Ok(_) => reject(
            Reason::Invalid,
            format!(
                "{} {amount} must be at least 0 and below {}",
                what(),
                from_minor(ORDER_MINOR_MAX, program.minor_units)
            ),
        ),
        Err(message) => reject(Reason::Invalid, format!("{}: {message}", what())),
    }
}

fn name_ok(name: &str) -> bool {
    // Not only white space (`trim` would walk both ends).
    name.len() <= MAX_NAME_LEN && name.chars().any(|c| !c.is_whitespace())
}

/// `record` in the state's encoding, as its derived `Serialize` writes it while `numbering`:
/// fields in declaration order, names by their number in `names`.
fn encode_order(names: &mut NameTable, record: &OrderRecord, out: &mut Vec<u8>) {
    let lines = record
        .lines
        .iter()
        .map(|line| (&line.sku, line.qty, line.returned, line.net_minor));
    encode_order_with(names, record, lines, record.rules.iter(), out);
}

/// `encode_order` with the record's lines (SKU, quantity, returned, net) and rules given
/// apart: a new order's come from its plan, so the record need not hold copies of them.
fn encode_order_with<'a>(
    names: &mut NameTable,
    record: &OrderRecord,
    lines: impl ExactSizeIterator<Item = (&'a Name, i64, i64, i64)>,
    rules: impl ExactSizeIterator<Item = &'a Name>,
    out: &mut Vec<u8>,
) {
    let mut encoder = Encoder { out };
    let e = &mut encoder;
    e.varint(record.member.into());
    e.signed(record.month.into());
    e.signed(record.total_minor);
    e.length(lines.len());
    for (sku, qty, returned, net_minor) in lines {
        e.varint(names.number(sku).into());
        e.signed(qty);
        e.signed(returned);
        e.signed(net_minor);
    }
    e.length(rules.len());
    for rule in rules {
        e.varint(names.number(rule).into());
    }
    e.length(record.earnings.len());
    for &(line, rule, points, cashback_minor) in &record.earnings {
        e.varint(line.into());
        e.varint(rule.into());
        e.signed(points);
        e.signed(cashback_minor);
    }
    e.length(record.order_points.len());
    for points in &record.order_points {
        e.varint(names.number(&points.rule).into());
        e.signed(points.points);
        e.optional(points.min_total_minor, Encoder::signed);
        e.length(points.needs_lines.len());
        for &line in &points.needs_lines {
            e.varint(line as u64);
        }
        e.flag(points.taken_back);
    }
    e.signed(record.paid_points);
    e.signed(record.paid_credit_minor);
    e.length(record.paid_slices.len());
    for slice in &record.paid_slices {
        e.varint(slice.lot.into());
        e.signed(slice.points);
        e.signed(slice.earned_at.timestamp_micros());
        e.optional(
            slice.expires_at.map(|t| t.timestamp_micros()),
            Encoder::signed,
        );
    }
    e.optional(record.own_lot, |e, lot| e.varint(lot.into()));
    for amount in [
        record.value_minor,
        record.spent_minor,
        record.returned_value_minor,
        record.points_refunded,
        record.credit_refunded_minor,
    ] {
        e.signed(amount);
    }
    e.flag(record.whole_returned);
    // Rare and many-fielded: through serde, with the table lent to its hooks (which costs
    // more than writing most records, so not for none).
    if record.promotions.is_empty() {
        e.length(0);
    } else {
        intern::numbering(names, || encode_into(out, &record.promotions));
    }
}

fn plan<'a>(merchant: &Merchant, ctx: &Ctx, order: &'a Purchase) -> Result<Plan<'a>, Rejection> {
    let program = &*ctx.program;
    let mut lines = plan_lines(program, order)?;
    let total_minor = money(order.total, program, "total")?;
    let mut shipping_minor = order
        .shipping
        .map_or(Ok(0), |s| money(s, program, "shipping"))?;
    let line_sum: i64 = lines.iter().map(|line| line.net_minor).sum();
    if total_minor < line_sum + shipping_minor {
        return reject(
            Reason::Invalid,
            "the total is less than the lines and shipping",
        );
    }
    let channel = order.channel.as_deref().unwrap_or(DEFAULT_CHANNEL);
    if !name_ok(channel) || order.store.as_deref().is_some_and(|store| !name_ok(store)) {
        return reject(
            Reason::Invalid,
            format!("channel and store names are 1 to {MAX_NAME_LEN} characters"),
        );
    }
    let who = resolve(merchant, &order.member, true)?;
    let member = match who {
        Who::Existing(index) | Who::Activate(index) => Some(&merchant.members[index as usize]),
        Who::New(_) => None,
    };
    // A member enrolled (or activated) by this order holds the entry tier from enrolment on.
    let tier_before = match who {
        Who::Existing(_) => member.and_then(|m| m.tier),
        Who::New(_) | Who::Activate(_) => {
            let counters = member.map(|m| m.counters.clone()).unwrap_or_default();
            tiers::qualifying(program, &counters, ctx.now_month())
        }
    };
    let (discounts, reward_points) =
        apply_rewards(program, order, &mut lines, &mut shipping_minor)?;
    let discount_minor: i64 = discounts.iter().map(|(_, amount, _)| amount).sum();
    let facts = OrderFacts {
        order,
        channel,
        total_minor,
        who: &who,
        tier: tier_before,
    };
    let promotions =
        promotions::plan_discounts(merchant, ctx, &facts, &mut lines, &mut shipping_minor)?;
    let mut plan = Plan {
        who,
        tier_before,
        lines,
        total_minor,
        discounts,
        pay_points: 0,
        reward_points,
        pay_credit_minor: 0,
        hold: None,
        hold_points: 0,
        hold_credit_minor: 0,
        value_minor: 0,
        eligible_minor: 0,
        rules: Vec::with_capacity(program.order_rules.len() + 1),
        earnings: Vec::with_capacity(4 * order.lines.len()),
        order_points: Vec::new(),
        points_earned: 0,
        cashback_minor: 0,
        promotions,
    };
    plan_payment(merchant, ctx, order, &mut plan, member)?;
    check_limits(program, &plan, member, discount_minor)?;
    let paid_minor = points_value_minor(
        plan.pay_points + plan.hold_points,
        program.point_value_micro,
        program.minor_units,
    ) + plan.pay_credit_minor
        + plan.hold_credit_minor;
    plan.value_minor = plan.lines.iter().map(|line| line.net_minor).sum();
    plan.eligible_minor = plan.value_minor - paid_minor.min(plan.value_minor);
    earn(program, ctx, order, channel, &mut plan)?;
    let promotion_points = promotions::plan_points(
        &merchant.promotions,
        program,
        &mut plan.promotions,
        plan.points_earned,
    );
    for (rule, points) in promotion_points {
        plan.rules.push((rule, points, 0));
        plan.points_earned += points;
    }
    Ok(plan)
}

fn plan_lines<'a>(program: &Program, order: &'a Purchase) -> Result<Vec<PlanLine<'a>>, Rejection> {
    if order.lines.is_empty() || order.lines.len() > MAX_LINES_PER_ORDER {
        return reject(
            Reason::Invalid,
            format!("an order has 1 to {MAX_LINES_PER_ORDER} lines"),
        );
    }
    let mut lines = Vec::with_capacity(order.lines.len());
    let mut sum = 0i64;
    for (i, line) in order.lines.iter().enumerate() {
        if !name_ok(&line.sku) || line.category.as_deref().is_some_and(|c| !name_ok(c)) {
            return reject(
                Reason::Invalid,
                format!(
                    "line {}: sku and category are 1 to {MAX_NAME_LEN} characters",
                    i + 1
                ),
            );
        }
        if !(1..=MAX_QTY_PER_LINE).contains(&line.qty) {
            return reject(
                Reason::Invalid,
                format!(
                    "line {}: quantity must be 1..={MAX_QTY_PER_LINE}, got {}",
                    i + 1,
                    line.qty
                ),
            );
        }
        let unit_minor = money_of(line.unit_price, program, || {
            format!("line {} unit_price", i + 1)
        })?;
        let discount_minor = money_of(line.discount, program, || {
            format!("line {} discount", i + 1)
        })?;
        let gross = i128::from(unit_minor) * i128::from(line.qty);
        if gross >= i128::from(ORDER_MINOR_MAX) || i128::from(discount_minor) > gross {
            return reject(
                Reason::Invalid,
                format!(
                    "line {}: the discount is more than the line, or the line is too large",
                    i + 1
                ),
            );
        }
        let net_minor = gross as i64 - discount_minor;
        sum += net_minor;
        if sum >= ORDER_MINOR_MAX {
            return reject(Reason::Invalid, "the order is too large");
        }
        let selected = select(program, &line.sku, line.category.as_deref());
        lines.push(PlanLine {
            sku: &line.sku,
            qty: line.qty,
            unit_minor,
            net_minor,
            free_units: 0,
            selected,
            points: 0,
            cashback_minor: 0,
        });
    }
    Ok(lines)
}

/// The order rules that select a line with this SKU and category.
fn select(program: &Program, sku: &str, category: Option<&str>) -> RuleMask {
    let by_sku = program.sku_selection.get(sku).copied().unwrap_or_default();
    let by_category = category
        .and_then(|c| program.category_selection.get(c))
        .copied()
        .unwrap_or_default();
    let include = program
        .all_lines
        .union(by_sku.include)
        .union(by_category.include);
    include.minus(by_sku.exclude.union(by_category.exclude))
}

/// Applies catalog rewards to the lines; returns (reward, discount, points) and the points.
#[allow(clippy::type_complexity)]
fn apply_rewards(
    program: &Program,
    order: &Purchase,
    lines: &mut [PlanLine],
    shipping_minor: &mut i64,
) -> Result<(Vec<(Name, i64, i64)>, i64), Rejection> {
    if order.rewards.len() > MAX_REWARDS_PER_ORDER {
        return reject(
            Reason::Invalid,
            format!("at most {MAX_REWARDS_PER_ORDER} rewards per order"),
        );
    }
    let mut discounts = Vec::with_capacity(order.rewards.len());
    let mut points = 0;
    for id in &order.rewards {
        let Some(reward) = program.rewards.get(id) else {
            return reject(
                Reason::UnknownReward,
                format!("reward {id:?} is not in the catalog"),
            );
        };
        let amount = match &reward.action {
            RewardAction::FreeProduct { sku } => {
                let Some(line) = lines
                    .iter_mut()
                    .find(|l| **l.sku == **sku && l.free_units < l.qty && l.net_minor > 0)
                else {
                    return reject(
                        Reason::Invalid,
                        format!("reward {id:?} needs {sku} in the order"),
                    );
                };
                let amount = line.unit_minor.min(line.net_minor);
                line.net_minor -= amount;
                line.free_units += 1;
                amount
            }
            RewardAction::PercentDiscount { percent_e4 } => {
                let base: i64 = lines.iter().map(|l| l.net_minor).sum();
                let amount = (i128::from(base) * i128::from(*percent_e4)
                    / i128::from(100 * RATE_SCALE)) as i64;
                spread_discount(lines, amount);
                amount
            }
            RewardAction::FixedDiscount { amount_minor } => {
                let base: i64 = lines.iter().map(|l| l.net_minor).sum();
                let amount = (*amount_minor).min(base);
                spread_discount(lines, amount);
                amount
            }
            RewardAction::FreeShipping => {
                if *shipping_minor == 0 {
                    return reject(
                        Reason::Invalid,
                        format!("reward {id:?} needs shipping in the order"),
                    );
                }
                std::mem::take(shipping_minor)
            }
        };
        points += reward.points;
        discounts.push((reward.id.clone(), amount, reward.points));
    }
    Ok((discounts, points))
}

/// Spreads an order discount over lines in proportion to their amounts (largest remainder).
fn spread_discount(lines: &mut [PlanLine], amount: i64) {
    let base: i64 = lines.iter().map(|l| l.net_minor).sum();
    if base == 0 || amount == 0 {
        return;
    }
    let numerators: Vec<i128> = lines
        .iter()
        .map(|l| i128::from(l.net_minor) * i128::from(amount))
        .collect();
    let (_, shares) = allocate(&numerators, i128::from(base));
    for (line, share) in lines.iter_mut().zip(shares) {
        line.net_minor -= share;
    }
}

/// `floor(Σ numerators / denominator)`, shared out into `parts` so that each part is its own
/// floor plus one for the largest remainders (ties to the earlier part). The parts add up to
/// the total, which is returned.
pub fn allocate_into(numerators: &[i128], denominator: i128, parts: &mut Vec<i64>) -> i64 {
    let mut sum = 0i128;
    parts.clear();
    for &n in numerators {
        sum += n;
        parts.push(div_rem(n, denominator).0 as i64);
    }
    let total = div_rem(sum, denominator).0 as i64;
    let left = total - parts.iter().sum::<i64>();
    if left > 0 {
        give_leftovers(numerators, denominator, parts, left);
    }
    debug_assert_eq!(parts.iter().sum::<i64>(), total);
    total
}

/// Gives the `left` points (fewer than there are parts) one each to the parts with the
/// largest remainders, ties to the earlier part.
fn give_leftovers(numerators: &[i128], denominator: i128, parts: &mut [i64], left: i64) {
    let remainder = |i: usize| div_rem(numerators[i], denominator).1;
    if numerators.len() > 64 {
        let mut order: Vec<usize> = (0..numerators.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(remainder(i)), i));
        order
            .iter()
            .take(left as usize)
            .for_each(|&i| parts[i] += 1);
        return;
    }
    // Few parts: pick the largest remaining remainder `left` times, without allocating.
    let mut given = 0u64;
    for _ in 0..left {
        let best = (0..numerators.len())
            .filter(|&i| given & (1 << i) == 0)
            .max_by_key(|&i| (remainder(i), std::cmp::Reverse(i)))
            .expect("fewer left-over points than parts");
        given |= 1 << best;
        parts[best] += 1;
    }
}

/// Quotient and remainder of non-negative `n` by positive `d`, natively when both fit in 64
/// bits (the common case: 128-bit division is a slow library call).
fn div_rem(n: i128, d: i128) -> (i128, i128) {
    if n == 0 {
        return (0, 0);
    }
    match (u64::try_from(n), u64::try_from(d)) {
        (Ok(n), Ok(d)) => ((n / d).into(), (n % d).into()),
        _ => (n / d, n % d),
    }
}

/// Like `allocate_into`, returning the parts.
pub fn allocate(numerators: &[i128], denominator: i128) -> (i64, Vec<i64>) {
    let mut parts = Vec::with_capacity(numerators.len());
    let total = allocate_into(numerators, denominator, &mut parts);
    (total, parts)
}

fn plan_payment(
    merchant: &Merchant,
    ctx: &Ctx,
    order: &Purchase,
    plan: &mut Plan,
    member: Option<&super::Member>,
) -> Result<(), Rejection> {
    let program = &*ctx.program;
    if !(0..ORDER_MINOR_MAX).contains(&order.pay.points) {
        return reject(Reason::Invalid, "points paid must be between 0 and 10^11");
    }
    plan.pay_points = order.pay.points;
    plan.pay_credit_minor = money(order.pay.credit, program, "credit paid")?;
    let Some(reference) = &order.hold else {
        return Ok(());
    };
    if plan.pay_points != 0 || plan.pay_credit_minor != 0 {
        return reject(
            Reason::Invalid,
            "pay either with a hold or with `pay`, not both",
        );
    }
    let key = reference
        .resolve(ctx.origin)
        .or_else(|m| reject(Reason::Invalid, m))?;
    let hold = holds::open_hold(merchant, &key)?;
    let same_member = member.is_some_and(|m| m.id == u64::from(hold.member) + 1);
    if !same_member {
        return reject(Reason::Invalid, "the hold belongs to another member");
    }
    plan.hold_points = hold.points;
    plan.hold_credit_minor = hold.credit_minor;
    plan.hold = Some(key);
    Ok(())
}

fn check_limits(
    program: &Program,
    plan: &Plan,
    member: Option<&super::Member>,
    discount_minor: i64,
) -> Result<(), Rejection> {
    let available = member.map_or(0, |m| m.available_points());
    let from_balance = plan.pay_points + plan.reward_points;
    if from_balance > 0 && from_balance > available {
        return reject(
            Reason::InsufficientPoints,
            format!("{from_balance} points needed, {available} available"),
        );
    }
    let credit = member.map_or(0, |m| m.credit_minor);
    if plan.pay_credit_minor > credit {
        let have = from_minor(credit, program.minor_units);
        return reject(
            Reason::InsufficientCredit,
            format!(
                "{} credit needed, {have} available",
                from_minor(plan.pay_credit_minor, program.minor_units)
            ),
        );
    }
    let redeemed = from_balance + plan.hold_points;
    if redeemed > 0 && redeemed < program.min_redeem_points {
        return reject(
            Reason::RedemptionUnderMinimum,
            format!(
                "at least {} points must be redeemed at once",
                program.min_redeem_points
            ),
        );
    }
    let points_value = points_value_minor(
        plan.pay_points + plan.hold_points,
        program.point_value_micro,
        program.minor_units,
    );
    let bonus_pay = i128::from(points_value + discount_minor);
    let limit = i128::from(plan.total_minor) * i128::from(program.max_redeem_percent_e4);
    if bonus_pay * i128::from(100 * RATE_SCALE) > limit {
        let percent = Decimal::new(program.max_redeem_percent_e4, 4).normalize();
        return reject(
            Reason::RedemptionOverLimit,
            format!("at most {percent}% of the order can be paid with points"),
        );
    }
    let due = plan.total_minor - discount_minor - plan.promotions.discount_minor();
    if points_value + plan.pay_credit_minor + plan.hold_credit_minor > due {
        return reject(
            Reason::RedemptionOverLimit,
            "the payment with points and credit is more than the order's total",
        );
    }
    Ok(())
}

/// Evaluates every earning rule: per rule a floor, shared out over the selected lines.
fn too_many_points(rule: &str) -> Result<(), Rejection> {
    reject(
        Reason::Invalid,
        format!("rule {rule:?} would give this order more than {MAX_POINTS} points"),
    )
}

fn earn(
    program: &Program,
    ctx: &Ctx,
    order: &Purchase,
    channel: &str,
    plan: &mut Plan,
) -> Result<(), Rejection> {
    let multiplier_e4 = i128::from(program.multiplier_e4(plan.tier_before));
    // Rules earn on `eligible / value` of each line; without loyalty payment the ratio is 1
    // and is left out, which keeps the numbers small.
    let (value, eligible) = if plan.eligible_minor == plan.value_minor {
        (
            i128::from(plan.value_minor.min(1)),
            i128::from(plan.value_minor.min(1)),
        )
    } else {
        (
            i128::from(plan.value_minor),
            i128::from(plan.eligible_minor),
        )
    };
    let minor_scale = 10_i128.pow(program.minor_units);
    let rate_scale = i128::from(RATE_SCALE);
    let store = order.store.as_deref();
    // Orders rarely have more than 16 lines: keep the numerators on the stack then (a heap
    // vector of i128 takes the allocator's slow aligned path).
    let mut stack = [0i128; 16];
    let mut heap = Vec::new();
    let numerators: &mut [i128] = if plan.lines.len() <= stack.len() {
        &mut stack[..plan.lines.len()]
    } else {
        heap.resize(plan.lines.len(), 0);
        &mut heap
    };
    let mut parts = Vec::with_capacity(plan.lines.len());
    for (index, rule) in program.order_rules.iter().enumerate() {
        let filter = &rule.filter;
        if !filter.channels.is_empty() && !filter.channels.iter().any(|c| c == channel)
            || !filter.stores.is_empty()
                && !store.is_some_and(|s| filter.stores.iter().any(|f| f == s))
            || filter
                .min_total_minor
                .is_some_and(|min| plan.total_minor < min)
            || !filter_holds(ctx, filter, plan.tier_before)
        {
            continue;
        }
        let selects = |l: usize| plan.lines[l].selected.contains(index);
        if !(0..plan.lines.len()).any(selects) {
            continue;
        }
        // Each selected line's exact share, as a numerator over the rule's denominator.
        let (denominator, is_cashback) = match rule.award {
            Award::PerAmount { points_e4 } => {
                let factor = i128::from(points_e4) * multiplier_e4 * eligible;
                for (l, n) in numerators.iter_mut().enumerate() {
                    *n = if selects(l) {
                        i128::from(plan.lines[l].net_minor) * factor
                    } else {
                        0
                    };
                }
                (value * minor_scale * rate_scale * rate_scale, false)
            }
            Award::PerUnit { points_e4 } => {
                let factor = i128::from(points_e4) * multiplier_e4 * eligible;
                for (l, n) in numerators.iter_mut().enumerate() {
                    let units = plan.lines[l].qty - plan.lines[l].free_units;
                    *n = if selects(l) {
                        i128::from(units) * factor
                    } else {
                        0
                    };
                }
                (value * rate_scale * rate_scale, false)
            }
            Award::Cashback { percent_e4 } => {
                let factor = i128::from(percent_e4) * eligible;
                for (l, n) in numerators.iter_mut().enumerate() {
                    *n = if selects(l) {
                        i128::from(plan.lines[l].net_minor) * factor
                    } else {
                        0
                    };
                }
                (value * 100 * rate_scale, true)
            }
            Award::PerOrder { points_e4 } => {
                if eligible > 0 {
                    let needs_lines: Vec<usize> = if rule.selects_lines {
                        (0..plan.lines.len()).filter(|&l| selects(l)).collect()
                    } else {
                        Vec::new()
                    };
                    let points = div_toward_zero(
                        i128::from(points_e4) * multiplier_e4,
                        rate_scale * rate_scale,
                    );
                    if points > i128::from(MAX_POINTS) {
                        return too_many_points(&rule.id);
                    }
                    order_level(plan, rule, needs_lines, points);
                }
                continue;
            }
            Award::PerEvent { .. } => unreachable!("event rules are not order rules"),
        };
        if value == 0 {
            continue;
        }
        if !is_cashback && numerators.iter().sum::<i128>() / denominator > i128::from(MAX_POINTS) {
            return too_many_points(&rule.id);
        }
        let total = allocate_into(numerators, denominator, &mut parts);
        record_rule(plan, &rule.id, total, &parts, is_cashback);
    }
    if let Some(tier) = plan
        .tier_before
        .map(|t| &program.tiers[t])
        .filter(|t| t.cashback_percent_e4 > 0)
    {
        if value > 0 {
            let numerators: Vec<i128> = plan
                .lines
                .iter()
                .map(|l| i128::from(l.net_minor) * i128::from(tier.cashback_percent_e4) * eligible)
                .collect();
            let (total, parts) = allocate(&numerators, value * 100 * rate_scale);
            record_rule(plan, &tier.cashback_rule, total, &parts, true);
        }
    }
    Ok(())
}

fn order_level(
    plan: &mut Plan,
    rule: &crate::program::Rule,
    needs_lines: Vec<usize>,
    points: i128,
) {
    let points = points as i64;
    if points <= 0 {
        return;
    }
    plan.rules.push((rule.id.clone(), points, 0));
    plan.points_earned += points;
    plan.order_points.push(OrderPoints {
        rule: rule.id.clone(),
        points,
        min_total_minor: rule.filter.min_total_minor,
        needs_lines,
        taken_back: false,
    });
}

fn record_rule(plan: &mut Plan, rule: &Name, total: i64, parts: &[i64], is_cashback: bool) {
    if total == 0 {
        return;
    }
    let position = u16::try_from(plan.rules.len()).expect("at most 256 rules and a tier's");
    for (l, (line, &part)) in plan
        .lines
        .iter_mut()
        .zip(parts)
        .enumerate()
        .filter(|(_, (_, part))| **part != 0)
    {
        if is_cashback {
            line.cashback_minor += part;
            plan.earnings.push((l as u32, position, 0, part));
        } else {
            line.points += part;
            plan.earnings.push((l as u32, position, part, 0));
        }
    }
    if is_cashback {
        plan.rules.push((rule.clone(), 0, total));
        plan.cashback_minor += total;
    } else {
        plan.rules.push((rule.clone(), total, 0));
        plan.points_earned += total;
    }
}

fn applied_of(plan: &Plan, program: &Program) -> Applied {
    let minor = program.minor_units;
    let value = i128::from(plan.value_minor.max(1));
    let mut applied = Applied {
        points_earned: plan.points_earned,
        points_redeemed: plan.pay_points + plan.hold_points + plan.reward_points,
        credit_redeemed: from_minor(plan.pay_credit_minor + plan.hold_credit_minor, minor),
        cashback: from_minor(plan.cashback_minor, minor),
        rules: plan
            .rules
            .iter()
            .map(|(rule, points, cashback)| RuleEarning {
                rule: rule.clone(),
                points: *points,
                cashback: from_minor(*cashback, minor),
            })
            .collect(),
        lines: plan
            .lines
            .iter()
            .map(|line| {
                let product = i128::from(line.net_minor) * i128::from(plan.eligible_minor);
                let eligible = div_toward_zero(product, value) as i64;
                LineEarning {
                    sku: line.sku.clone(),
                    eligible: from_minor(eligible, minor),
                    points: line.points,
                    cashback: from_minor(line.cashback_minor, minor),
                }
            })
            .collect(),
        discounts: plan
            .discounts
            .iter()
            .map(|(reward, amount, points)| Discount {
                reward: reward.to_string(),
                amount: from_minor(*amount, minor),
                points: *points,
            })
            .collect(),
        ..Applied::default()
    };
    let skus: Vec<&Name> = plan.lines.iter().map(|line| line.sku).collect();
    promotions::describe(program, &plan.promotions, &skus, &mut applied);
    applied
}

#[cfg(test)]
mod tests {
    use super::allocate;

    #[test]
    fn allocation_parts_add_up_to_the_floor_of_the_total() {
        let (total, parts) = allocate(&[10, 10, 10], 6);
        assert_eq!(total, 5);
        assert_eq!(parts, vec![2, 2, 1]);
        let (total, parts) = allocate(&[5, 7, 0], 4);
        assert_eq!((total, parts), (3, vec![1, 2, 0]));
    }
}
