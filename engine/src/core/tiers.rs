//! Tier qualification: the highest active tier whose thresholds are met over its window.

use super::member::{Counters, Member, Totals};
use crate::program::{Combine, Downgrade, Program, Tier, Window};

/// The totals a tier's window sees at local month `current_month`.
pub fn window_totals(counters: &Counters, window: Window, current_month: i32) -> Totals {
    match window {
        Window::Lifetime => counters.lifetime,
        Window::CalendarYear => {
            counters.sum(current_month - current_month.rem_euclid(12), current_month)
        }
        Window::RollingMonths(months) => {
            counters.sum(current_month - months as i32 + 1, current_month)
        }
    }
}

fn meets(tier: &Tier, totals: Totals) -> bool {
    let checks = [
        tier.points_earned.map(|min| totals.points_earned >= min),
        tier.amount_spent_minor
            .map(|min| totals.amount_spent_minor >= min),
        tier.orders.map(|min| totals.orders >= i64::from(min)),
    ];
    let mut set = checks.iter().flatten().peekable();
    if set.peek().is_none() {
        return true; // an entry tier with no thresholds
    }
    match tier.combine {
        Combine::Any => set.any(|met| *met),
        Combine::All => set.all(|met| *met),
    }
}

/// The highest active tier the counters qualify for.
pub fn qualifying(program: &Program, counters: &Counters, current_month: i32) -> Option<usize> {
    program
        .tiers
        .iter()
        .enumerate()
        .rev()
        .find(|(_, tier)| {
            tier.active && meets(tier, window_totals(counters, tier.window, current_month))
        })
        .map(|(index, _)| index)
}

/// After a command that may have met a threshold: the tier rises at once, never falls.
pub fn rise(program: &Program, member: &mut Member, current_month: i32) {
    let qualified = qualifying(program, &member.counters, current_month);
    if qualified > member.tier {
        member.tier = qualified;
    }
}

/// At a local month start: a member may fall if its tier's window has a boundary now and
/// the tier allows downgrades. Returns whether the tier changed.
pub fn reevaluate_at_month_start(
    program: &Program,
    member: &mut Member,
    current_month: i32,
) -> bool {
    let qualified = qualifying(program, &member.counters, current_month);
    let may_fall = member.tier.is_none_or(|index| {
        let tier = &program.tiers[index];
        let boundary = match tier.window {
            Window::Lifetime => false,
            Window::CalendarYear => current_month.rem_euclid(12) == 0,
            Window::RollingMonths(_) => true,
        };
        boundary && tier.downgrade == Downgrade::Window || !tier.active
    });
    let next = if may_fall {
        qualified
    } else {
        qualified.max(member.tier)
    };
    let changed = next != member.tier;
    member.tier = next;
    changed
}
