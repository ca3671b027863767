//! Returns take back, per returned unit, what its line earned by the values recorded when it
//! was bought (not today's rules); order-level points go when the order no longer qualifies;
//! points and credit the order was paid with come back in proportion to the value returned.

use tally_protocol::{Applied, EntryKind, LineEarning, Name, Reason, Return, RuleEarning, Wallet};

use super::holds::split_slices;
use super::member::{Member, Slice, Totals};
use super::promotions::{self, TakeBack};
use super::purchase::{OrderRecord, PackedOrder};
use super::{finish_member, reject, Books, Ctx, Merchant, Record, Rejection};
use crate::money::from_minor;
use crate::program::NegativeBalance;

/// `floor(amount × after / whole) − floor(amount × before / whole)`: the share of a cumulative
/// proportion that falls between `before` and `after`. Shares add up to `amount` exactly.
fn share(amount: i64, before: i64, after: i64, whole: i64) -> i64 {
    if whole == 0 {
        return if after == before { 0 } else { amount };
    }
    let at = |part: i64| (i128::from(amount) * i128::from(part) / i128::from(whole)) as i64;
    at(after) - at(before)
}

struct ReturnPlan {
    /// (line, units returned now)
    units: Vec<(usize, i64)>,
    /// Per rule: points and cashback taken back.
    rules: Vec<(Name, i64, i64)>,
    /// Per returned line: points and cashback taken back.
    lines: Vec<(usize, i64, i64)>,
    value_minor: i64,
    whole: bool,
    order_points_taken: Vec<usize>,
    points_refund: i64,
    credit_refund_minor: i64,
    spent_minor: i64,
    promotions: Vec<TakeBack>,
}

pub fn apply_return(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    ret: &Return,
) -> Result<Applied, Rejection> {
    let key = ret
        .order
        .resolve(ctx.origin)
        .or_else(|m| reject(Reason::Invalid, m))?;
    let Some(Record::Order(packed)) = merchant.receipts.get(&key).map(|r| &r.record) else {
        return reject(Reason::UnknownOrder, format!("no purchase {key}"));
    };
    let mut record = packed.unpack(&mut merchant.names);
    let plan = plan(&record, ret)?;
    let index = record.member;
    let tier = merchant.members[index as usize].tier;
    let negative = ctx.program.negative_balance;
    let member = &mut merchant.members[index as usize];
    let mut applied = Applied::default();
    refund(member, books, ctx, &mut record, &plan, &mut applied);
    let (points_off, credit_off) = take_back(member, books, ctx, &record, &plan, negative);
    applied.points_written_off = points_off;
    applied.credit_written_off = from_minor(credit_off, ctx.program.minor_units);
    let points_taken: i64 = plan.rules.iter().map(|(_, p, _)| p).sum();
    let delta = Totals {
        points_earned: -points_taken,
        amount_spent_minor: -plan.spent_minor,
        orders: -i64::from(plan.whole),
    };
    member
        .counters
        .add(record.month, delta, ctx.program.tier_months_kept);
    describe(&mut applied, &record, &plan, ctx.program.minor_units);
    update_record(&mut record, &plan);
    promotions::commit_return(
        &mut merchant.promotions,
        index,
        &mut record.promotions,
        &plan.promotions,
        &mut applied,
    );
    let receipt = merchant.receipts.get_mut(&key).expect("found above");
    receipt.record = Record::Order(PackedOrder::pack(&mut merchant.names, &record));
    finish_member(merchant, ctx, index, false, tier, &mut applied);
    Ok(applied)
}

fn plan(record: &OrderRecord, ret: &Return) -> Result<ReturnPlan, Rejection> {
    let units = returned_units(record, ret)?;
    let mut rules: Vec<(Name, i64, i64)> = Vec::new();
    let mut lines = Vec::new();
    let mut value_minor = 0;
    let mut returned_after: Vec<i64> = record.lines.iter().map(|line| line.returned).collect();
    for &(l, qty) in &units {
        let line = &record.lines[l];
        let (before, after) = (line.returned, line.returned + qty);
        returned_after[l] = after;
        value_minor += share(line.net_minor, before, after, line.qty);
        let (mut line_points, mut line_cashback) = (0, 0);
        for (_, position, points, cashback) in record
            .earnings
            .iter()
            .filter(|earned| earned.0 as usize == l)
        {
            let rule = &record.rules[usize::from(*position)];
            let (p, c) = (
                share(*points, before, after, line.qty),
                share(*cashback, before, after, line.qty),
            );
            add_rule(&mut rules, rule, p, c);
            line_points += p;
            line_cashback += c;
        }
        lines.push((l, line_points, line_cashback));
    }
    let whole = record
        .lines
        .iter()
        .zip(&returned_after)
        .all(|(line, after)| *after == line.qty);
    let remaining_total = record.total_minor - record.returned_value_minor - value_minor;
    let mut order_points_taken = Vec::new();
    for (i, order_points) in record
        .order_points
        .iter()
        .enumerate()
        .filter(|(_, o)| !o.taken_back)
    {
        let below_minimum = order_points
            .min_total_minor
            .is_some_and(|min| remaining_total < min);
        let lines_gone = !order_points.needs_lines.is_empty()
            && order_points
                .needs_lines
                .iter()
                .all(|&l| returned_after[l] == record.lines[l].qty);
        if whole || below_minimum || lines_gone {
            add_rule(&mut rules, &order_points.rule, order_points.points, 0);
            order_points_taken.push(i);
        }
    }
    let remaining_units: Vec<i64> = record
        .lines
        .iter()
        .zip(&returned_after)
        .map(|(line, after)| line.qty - after)
        .collect();
    let (promotions, promotion_points) =
        promotions::plan_return(&record.promotions, &remaining_units, remaining_total, whole);
    for (rule, points) in &promotion_points {
        add_rule(&mut rules, rule, *points, 0);
    }
    let value_before = record.returned_value_minor;
    let value_after = value_before + value_minor;
    let proportional = |amount: i64, refunded: i64| {
        if whole {
            amount - refunded
        } else {
            share(amount, value_before, value_after, record.value_minor)
        }
    };
    Ok(ReturnPlan {
        points_refund: proportional(record.paid_points, record.points_refunded),
        credit_refund_minor: proportional(record.paid_credit_minor, record.credit_refunded_minor),
        spent_minor: if whole {
            record.spent_minor - share(record.spent_minor, 0, value_before, record.value_minor)
        } else {
            share(
                record.spent_minor,
                value_before,
                value_after,
                record.value_minor,
            )
        },
        units,
        rules,
        lines,
        value_minor,
        whole,
        order_points_taken,
        promotions,
    })
}

fn add_rule(rules: &mut Vec<(Name, i64, i64)>, rule: &Name, points: i64, cashback: i64) {
    match rules.iter_mut().find(|(id, _, _)| id == rule) {
        Some((_, p, c)) => {
            *p += points;
            *c += cashback;
        }
        None => rules.push((rule.clone(), points, cashback)),
    }
}

/// Which lines and how many units come back; SKUs on several lines fill them in order.
fn returned_units(record: &OrderRecord, ret: &Return) -> Result<Vec<(usize, i64)>, Rejection> {
    let remaining = |l: usize| record.lines[l].qty - record.lines[l].returned;
    let Some(returned) = &ret.lines else {
        let all: Vec<(usize, i64)> = (0..record.lines.len())
            .map(|l| (l, remaining(l)))
            .filter(|(_, q)| *q > 0)
            .collect();
        if all.is_empty() {
            return reject(
                Reason::ReturnExceedsOrder,
                "everything in this order was already returned",
            );
        }
        return Ok(all);
    };
    if returned.is_empty() || returned.len() > super::MAX_LINES_PER_ORDER {
        return reject(
            Reason::Invalid,
            "a return names 1 or more lines (or none at all, for the whole order)",
        );
    }
    let mut units: Vec<(usize, i64)> = Vec::new();
    for line in returned {
        if line.qty < 1 {
            return reject(
                Reason::Invalid,
                format!("returned quantity of {} must be 1 or more", line.sku),
            );
        }
        let mut left = line.qty;
        for l in (0..record.lines.len()).filter(|&l| *record.lines[l].sku == *line.sku) {
            let taken: i64 = units.iter().filter(|(u, _)| *u == l).map(|(_, q)| q).sum();
            let qty = left.min(remaining(l) - taken);
            if qty > 0 {
                units.push((l, qty));
                left -= qty;
            }
        }
        if left > 0 {
            return reject(
                Reason::ReturnExceedsOrder,
                format!("{} more {} returned than bought", left, line.sku),
            );
        }
    }
    // One entry per line, in line order.
    units.sort_by_key(|(l, _)| *l);
    units.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 += next.1;
        }
        same
    });
    Ok(units)
}

/// Gives back points and credit the order was paid with, to the lots they came from.
fn refund(
    member: &mut Member,
    books: &mut Books,
    ctx: &Ctx,
    record: &mut OrderRecord,
    plan: &ReturnPlan,
    applied: &mut Applied,
) {
    let (_, not_yet_refunded) = split_slices(&record.paid_slices, record.points_refunded);
    let (slices, _) = split_slices(&not_yet_refunded, plan.points_refund);
    member.restore(&slices);
    books.post(
        ctx,
        member,
        Wallet::Points,
        EntryKind::Reversal,
        plan.points_refund,
        None,
        slices,
    );
    member.credit_minor += plan.credit_refund_minor;
    books.post(
        ctx,
        member,
        Wallet::Credit,
        EntryKind::Reversal,
        plan.credit_refund_minor,
        None,
        Vec::new(),
    );
    applied.points_redeemed = -plan.points_refund;
    applied.credit_redeemed = -from_minor(plan.credit_refund_minor, ctx.program.minor_units);
}

/// Takes back points and cashback; returns what was written off (points, credit).
fn take_back(
    member: &mut Member,
    books: &mut Books,
    ctx: &Ctx,
    record: &OrderRecord,
    plan: &ReturnPlan,
    negative: NegativeBalance,
) -> (i64, i64) {
    let points: i64 = plan.rules.iter().map(|(_, p, _)| p).sum();
    let (slices, missing) = member.claw_back(points, record.own_lot);
    let points_off = match negative {
        NegativeBalance::Allow => {
            member.points -= missing;
            member.debt_points += missing;
            0
        }
        NegativeBalance::Clamp => missing,
    };
    // Entries per rule; under `clamp` the last rules carry what was written off.
    let mut budget = points - points_off;
    let mut slices_left = slices;
    for (rule, rule_points, _) in plan.rules.iter().filter(|(_, p, _)| *p > 0) {
        let amount = (*rule_points).min(budget);
        budget -= amount;
        let (taken, rest): (Vec<Slice>, Vec<Slice>) = split_slices(&slices_left, amount);
        slices_left = rest;
        books.post(
            ctx,
            member,
            Wallet::Points,
            EntryKind::Reversal,
            -amount,
            Some(rule),
            taken,
        );
    }
    let cashback: i64 = plan.rules.iter().map(|(_, _, c)| c).sum();
    let credit_off = match negative {
        NegativeBalance::Allow => 0,
        NegativeBalance::Clamp => (cashback - member.credit_minor.max(0)).max(0),
    };
    let mut budget = cashback - credit_off;
    for (rule, _, rule_cashback) in plan.rules.iter().filter(|(_, _, c)| *c > 0) {
        let amount = (*rule_cashback).min(budget);
        budget -= amount;
        member.credit_minor -= amount;
        books.post(
            ctx,
            member,
            Wallet::Credit,
            EntryKind::Reversal,
            -amount,
            Some(rule),
            Vec::new(),
        );
    }
    (points_off, credit_off)
}

fn describe(applied: &mut Applied, record: &OrderRecord, plan: &ReturnPlan, minor_units: u32) {
    applied.points_earned = -plan.rules.iter().map(|(_, p, _)| p).sum::<i64>();
    applied.cashback = -from_minor(plan.rules.iter().map(|(_, _, c)| c).sum(), minor_units);
    applied.rules = plan
        .rules
        .iter()
        .map(|(rule, p, c)| RuleEarning {
            rule: rule.clone(),
            points: -p,
            cashback: -from_minor(*c, minor_units),
        })
        .collect();
    applied.lines = plan
        .lines
        .iter()
        .zip(&plan.units)
        .map(|((l, p, c), (_, qty))| {
            let line = &record.lines[*l];
            LineEarning {
                sku: line.sku.clone(),
                eligible: -from_minor(
                    share(line.net_minor, line.returned, line.returned + qty, line.qty),
                    minor_units,
                ),
                points: -p,
                cashback: -from_minor(*c, minor_units),
            }
        })
        .collect();
}

fn update_record(record: &mut OrderRecord, plan: &ReturnPlan) {
    for &(l, qty) in &plan.units {
        record.lines[l].returned += qty;
    }
    for &i in &plan.order_points_taken {
        record.order_points[i].taken_back = true;
    }
    record.returned_value_minor += plan.value_minor;
    record.points_refunded += plan.points_refund;
    record.credit_refunded_minor += plan.credit_refund_minor;
    record.whole_returned = plan.whole;
}
