//! Time: local calendars for rules and tiers, expiry instants, and the engine-issued `tick`
//! that does all time-driven work (pending release, expiry, hold lapse, birthday bonuses,
//! tier re-evaluation) in time order, each piece at its own due time.

use std::cell::RefCell;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike};
use chrono_tz::Tz;
use tally_protocol::{Applied, EntryKind, Reason, TickSummary, Wallet};

use super::{holds, members, reject, tiers, Books, Ctx, Merchant, Rejection};
use crate::program::{Expiry, Program};
use crate::Timestamp;

/// The first instant of a local date (the earliest one if the zone repeats it; after a gap
/// if the zone skips midnight).
fn start_of_local_day(program: &Program, date: NaiveDate) -> Timestamp {
    let mut naive = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    for _ in 0..4 {
        if let Some(local) = program.zone.from_local_datetime(&naive).earliest() {
            return local.with_timezone(&chrono::Utc);
        }
        naive += chrono::TimeDelta::hours(1);
    }
    unreachable!("no zone skips four hours")
}

pub fn local_date(program: &Program, at: Timestamp) -> NaiveDate {
    local_time(program.zone, at).date()
}

/// `at` on the zone's wall clock: what `at.with_timezone(&zone).naive_local()` gives.
fn local_time(zone: Tz, at: Timestamp) -> NaiveDateTime {
    at.naive_utc() + TimeDelta::seconds(utc_offset_s(zone, at).into())
}

/// UTC hours whose offset is remembered, per thread: orders arrive close to time order.
const OFFSET_SLOTS: usize = 64;

thread_local! {
    static OFFSETS: RefCell<[Option<(Tz, i64, i32)>; OFFSET_SLOTS]> =
        const { RefCell::new([None; OFFSET_SLOTS]) };
}

/// The zone's offset from UTC at `at`, in seconds, remembered for the UTC hour around it.
/// Asking the zone is a binary search over its transitions, a few times an order. An hour
/// is remembered only when its first and last second have the same offset: a transition
/// inside it (some zones shift at a half or three quarters past the hour) would give them
/// different ones, and no zone shifts twice within an hour. `offsets_agree_with_the_zone`
/// compares the two around every transition of zones that shift by 30 and 45 minutes.
fn utc_offset_s(zone: Tz, at: Timestamp) -> i32 {
    let offset_at = |t: Timestamp| zone.offset_from_utc_datetime(&t.naive_utc()).fix();
    let hour = at.timestamp().div_euclid(3600);
    let slot = hour.rem_euclid(OFFSET_SLOTS as i64) as usize;
    if let Some((known_zone, known_hour, offset)) = OFFSETS.with_borrow(|slots| slots[slot]) {
        if known_zone == zone && known_hour == hour {
            return offset;
        }
    }
    let first = Timestamp::from_timestamp(hour * 3600, 0);
    let last = Timestamp::from_timestamp(hour * 3600 + 3599, 0);
    match (first.map(offset_at), last.map(offset_at)) {
        (Some(first), Some(last)) if first == last => {
            let offset = first.local_minus_utc();
            OFFSETS.with_borrow_mut(|slots| slots[slot] = Some((zone, hour, offset)));
            offset
        }
        _ => offset_at(at).local_minus_utc(),
    }
}

/// Local month as `year * 12 + month0`.
pub fn month_index(program: &Program, at: Timestamp) -> i32 {
    let date = local_date(program, at);
    date.year() * 12 + date.month0() as i32
}

fn month_start(program: &Program, month: i32) -> Timestamp {
    let date = NaiveDate::from_ymd_opt(month.div_euclid(12), month.rem_euclid(12) as u32 + 1, 1)
        .expect("valid month");
    start_of_local_day(program, date)
}

/// Weekday (bit 0 = Monday) and minute of the day in the merchant's zone.
pub fn local_weekday_minute(program: &Program, at: Timestamp) -> (u32, u32) {
    let local = local_time(program.zone, at);
    (
        local.weekday().num_days_from_monday(),
        local.hour() * 60 + local.minute(),
    )
}

/// When points earned at `earned_at` expire (they are gone at that instant).
pub fn expiry_of(program: &Program, earned_at: Timestamp) -> Option<Timestamp> {
    match program.expiry {
        Expiry::Never => None,
        Expiry::AfterDays(days) => Some(earned_at + chrono::TimeDelta::days(days.into())),
        Expiry::EndOfMonth => Some(month_start(program, month_index(program, earned_at) + 1)),
        Expiry::EndOfYear => {
            let year = local_date(program, earned_at).year();
            Some(month_start(program, (year + 1) * 12))
        }
    }
}

/// Sets the next day and month boundaries after the merchant's clock, if the program needs them.
pub fn schedule_boundaries(merchant: &mut Merchant) {
    let program = merchant.program().clone();
    let clock = merchant.clock;
    merchant.next_day_start = program.has_birthday_bonus.then(|| {
        let tomorrow = local_date(&program, clock)
            .succ_opt()
            .expect("date in range");
        start_of_local_day(&program, tomorrow)
    });
    merchant.next_month_start = (program.reevaluates_at_month_start
        || program.tier_months_kept > 0)
        .then(|| month_start(&program, month_index(&program, clock) + 1));
}

pub fn due_at(merchant: &Merchant) -> Option<Timestamp> {
    let timer = merchant.timers.first().map(|(at, _)| *at);
    [timer, merchant.next_day_start, merchant.next_month_start]
        .into_iter()
        .flatten()
        .min()
}

/// Puts a member in the timer queue if it has work due earlier than it is registered for.
pub fn register_timer(merchant: &mut Merchant, index: u32) {
    let member = &mut merchant.members[index as usize];
    let due = member.next_due();
    if let Some(due) = due {
        if member.timer_at.is_none_or(|registered| due < registered) {
            member.timer_at = Some(due);
            merchant.timers.insert((due, index));
        }
    }
}

enum Work {
    Member(u32),
    DayStart,
    MonthStart,
}

/// Does all work due up to the command's time, earliest first.
pub fn tick(merchant: &mut Merchant, books: &mut Books, ctx: &Ctx) -> Result<Applied, Rejection> {
    if ctx.at < merchant.clock {
        return reject(
            Reason::Invalid,
            format!("the clock is already at {}", merchant.clock),
        );
    }
    let mut summary = TickSummary::default();
    // Bounded: each step pops a timer or moves a boundary forward, and both are finite up to `at`.
    while let Some((due, work)) = next_work(merchant) {
        if due > ctx.at {
            break;
        }
        let step_ctx = ctx.at_instant(due);
        match work {
            Work::Member(index) => {
                merchant.timers.pop_first();
                if merchant.members[index as usize].timer_at == Some(due) {
                    merchant.members[index as usize].timer_at = None;
                    settle_member(merchant, books, &step_ctx, index, &mut summary);
                    register_timer(merchant, index);
                }
            }
            Work::DayStart => {
                birthdays(merchant, books, &step_ctx, &mut summary);
                let program = merchant.program().clone();
                let tomorrow = local_date(&program, due).succ_opt().expect("date in range");
                merchant.next_day_start = Some(start_of_local_day(&program, tomorrow));
            }
            Work::MonthStart => {
                month_start_work(merchant, &step_ctx, &mut summary);
                let program = merchant.program().clone();
                merchant.next_month_start =
                    Some(month_start(&program, month_index(&program, due) + 1));
            }
        }
    }
    merchant.clock = ctx.at;
    Ok(Applied {
        program_version: ctx.program.version,
        tick: Some(summary),
        ..Applied::default()
    })
}

fn next_work(merchant: &Merchant) -> Option<(Timestamp, Work)> {
    let timer = merchant
        .timers
        .first()
        .map(|(at, index)| (*at, Work::Member(*index)));
    let day = merchant.next_day_start.map(|at| (at, Work::DayStart));
    let month = merchant.next_month_start.map(|at| (at, Work::MonthStart));
    // Ties: member work first, then birthdays, then tier re-evaluation.
    [timer, day, month]
        .into_iter()
        .flatten()
        .min_by_key(|(at, work)| {
            let order = match work {
                Work::Member(_) => 0,
                Work::DayStart => 1,
                Work::MonthStart => 2,
            };
            (*at, order)
        })
}

/// Releases pending points, expires lots and lapses holds of one member at `ctx.now`.
fn settle_member(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    index: u32,
    summary: &mut TickSummary,
) {
    summary.members += 1;
    let lapsed = holds::lapse_due(merchant, books, ctx, index);
    summary.holds_lapsed += lapsed;
    let member = &mut merchant.members[index as usize];
    summary.points_released += member.release_pending(ctx.now);
    let expired = member.expire(ctx.now);
    let points: i64 = expired.iter().map(|slice| slice.points).sum();
    summary.points_expired += points;
    books.post(
        ctx,
        member,
        Wallet::Points,
        EntryKind::Expiry,
        -points,
        None,
        expired,
    );
    member.assert_conserved(false);
}

fn birthdays(merchant: &mut Merchant, books: &mut Books, ctx: &Ctx, summary: &mut TickSummary) {
    let program = merchant.program().clone();
    let today = local_date(&program, ctx.now);
    let mut keys = vec![(today.month(), today.day())];
    // Members born on 29 February celebrate on the 28th in other years.
    if today.month() == 2 && today.day() == 28 && !today.leap_year() {
        keys.push((2, 29));
    }
    let indexes: Vec<u32> = keys
        .iter()
        .flat_map(|key| merchant.birthdays.get(key).cloned().unwrap_or_default())
        .collect();
    for index in indexes {
        if members::birthday_bonus(merchant, books, ctx, index, today.year()) {
            summary.birthday_bonuses += 1;
        }
    }
}

fn month_start_work(merchant: &mut Merchant, ctx: &Ctx, summary: &mut TickSummary) {
    let program = merchant.program().clone();
    let month = month_index(&program, ctx.now);
    for member in &mut merchant.members {
        member.counters.prune(month, program.tier_months_kept);
        if program.reevaluates_at_month_start
            && tiers::reevaluate_at_month_start(&program, member, month)
        {
            summary.tier_changes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Offset, TimeZone};
    use chrono_tz::Tz;

    use super::utc_offset_s;
    use crate::Timestamp;

    /// Every ten minutes of three years, and every second of the ten minutes around each
    /// transition, in zones that shift on the hour, at half past (Lord Howe's 30-minute
    /// daylight saving) and at a quarter to (Chatham), and one that never shifts.
    #[test]
    fn offsets_agree_with_the_zone() {
        let zones = [
            "Australia/Lord_Howe",
            "Pacific/Chatham",
            "America/St_Johns",
            "Europe/London",
            "Asia/Kathmandu",
        ];
        let start = Timestamp::from_timestamp(1_704_067_200, 0).unwrap(); // 2024-01-01
        let step = chrono::TimeDelta::minutes(10);
        for name in zones {
            let zone: Tz = name.parse().unwrap();
            let zone_says = |t: Timestamp| {
                zone.offset_from_utc_datetime(&t.naive_utc())
                    .fix()
                    .local_minus_utc()
            };
            let mut transitions = 0;
            let mut before = zone_says(start);
            for i in 0..3 * 365 * 144 {
                let at = start + step * i;
                let offset = zone_says(at);
                assert_eq!(utc_offset_s(zone, at), offset, "{name} {at}");
                if offset != before {
                    transitions += 1;
                    for second in 0..600 {
                        let t = at - chrono::TimeDelta::seconds(second);
                        assert_eq!(utc_offset_s(zone, t), zone_says(t), "{name} {t}");
                    }
                }
                before = offset;
            }
            let shifts = name != "Asia/Kathmandu";
            assert_eq!(transitions > 0, shifts, "{name}: {transitions} transitions");
        }
    }
}
