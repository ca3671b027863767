//! One member as a snapshot shows it: read-only, from the state alone; and a snapshot
//! taken while commands go on applying (`SnapshotCursor`).
//!
//! A cursor records, at its position, every merchant's program, clock and member count, and
//! walks the members in order, a chunk at a time. Before a command changes a member the
//! cursor has not reached, the caller has the member's row captured as it is still (copy on
//! touch): the rows all show the state at the position, with no copy of the state and no
//! pause longer than a chunk. Members enrolled after the position are not in it.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{Datelike, TimeDelta};
use rustc_hash::FxHashSet;
use tally_protocol::{Alias, Body, Command, MemberRef, RowBlock, RowNumbers, SnapshotRow};

use super::member::{Member, Totals};
use super::members::{alias_of, resolve, Who};
use super::time::{local_date, month_index};
use super::{tiers, Entry, Ledger, Merchant, Record};
use crate::program::{Program, Window};
use crate::Timestamp;

/// Days of birthdays a tick may cross before a cursor takes the whole merchant instead.
const MAX_BIRTHDAY_DAYS_NAMED: u32 = 400;

/// Days ahead for which a snapshot sums the points about to expire.
pub const EXPIRING_WITHIN_DAYS: [i64; 3] = [30, 60, 90];

/// Rows per block of a snapshot taken in one go.
const ROWS_PER_BLOCK: usize = 8192;

impl Ledger {
    /// Every member of every merchant (or of one), by merchant and member id, as of the
    /// last applied command, in blocks of rows.
    pub fn snapshot_blocks<'a>(
        &'a self,
        merchant: Option<&'a str>,
    ) -> impl Iterator<Item = RowBlock> + 'a {
        let mut cursor = self.snapshot_cursor(merchant);
        std::iter::from_fn(move || {
            let block = self.snapshot_next(&mut cursor, ROWS_PER_BLOCK);
            (!block.is_empty()).then_some(block)
        })
    }

    /// `snapshot_blocks`, a row at a time.
    pub fn snapshot<'a>(
        &'a self,
        merchant: Option<&'a str>,
    ) -> impl Iterator<Item = SnapshotRow> + 'a {
        self.snapshot_blocks(merchant)
            .flat_map(|block| block.iter().map(|row| row.to_row()).collect::<Vec<_>>())
    }
}

/// What every row of one merchant shares, worked out once: a snapshot builds millions of
/// rows, and the clock's local month alone cost more than the rest of a row.
#[derive(Debug)]
struct RowContext {
    merchant: tally_protocol::Name,
    program: Arc<Program>,
    /// `month_index` of the merchant's clock: the current month of the tier windows.
    month: i32,
    /// The merchant's clock plus each of `EXPIRING_WITHIN_DAYS`.
    expiring_limits: [Timestamp; 3],
}

impl RowContext {
    fn of(merchant: &Merchant) -> RowContext {
        let program = merchant.program().clone();
        let clock = merchant.clock;
        RowContext {
            merchant: merchant.name.clone(),
            month: month_index(&program, clock),
            expiring_limits: EXPIRING_WITHIN_DAYS.map(|days| clock + TimeDelta::days(days)),
            program,
        }
    }
}

/// Adds the member's row to a block: no allocation of its own.
fn push_row(block: &mut RowBlock, context: &RowContext, member: &Member) {
    let tier = tier_name(context, member);
    let numbers = row_numbers(context, member);
    block.push_with(&context.merchant, tier, numbers, |text| {
        write_aliases(text, &member.aliases)
    });
}

/// The member's row on its own (a row captured before a change).
fn member_row(context: &RowContext, member: &Member) -> SnapshotRow {
    let mut aliases = String::new();
    write_aliases(&mut aliases, &member.aliases);
    SnapshotRow {
        merchant: context.merchant.to_string(),
        aliases,
        tier: tier_name(context, member).map(str::to_string),
        numbers: row_numbers(context, member),
    }
}

fn tier_name<'a>(context: &'a RowContext, member: &Member) -> Option<&'a str> {
    member.tier.map(|index| &*context.program.tiers[index].id)
}

fn row_numbers(context: &RowContext, member: &Member) -> RowNumbers {
    let program = &*context.program;
    // Totals over the window of the member's tier (the lowest tier's when it has none).
    let window = window_totals(program, member, context.month);
    RowNumbers {
        member: member.id,
        points: member.points,
        available: member.available_points(),
        pending: member.pending_points,
        held: member.held_points,
        credit_minor: member.credit_minor,
        credit_held_minor: member.held_credit_minor,
        minor_units: program.minor_units,
        window_points_earned: window.points_earned,
        window_amount_spent_minor: window.amount_spent_minor,
        window_orders: window.orders,
        expiring: expiring(member, &context.expiring_limits),
    }
}

/// Phones as they are, cards as `card:<number>`, joined by `;`, appended to `text`.
fn write_aliases(text: &mut String, aliases: &[Alias]) {
    for (index, alias) in aliases.iter().enumerate() {
        if index > 0 {
            text.push(';');
        }
        match alias {
            Alias::Phone(phone) => text.push_str(phone),
            Alias::Card(card) => {
                text.push_str("card:");
                text.push_str(card);
            }
        }
    }
}

fn window_totals(program: &Program, member: &Member, month: i32) -> Totals {
    let window = member
        .tier
        .or((!program.tiers.is_empty()).then_some(0))
        .map_or(Window::Lifetime, |index| program.tiers[index].window);
    tiers::window_totals(&member.counters, window, month)
}

/// Lots are kept earliest expiry first, so the scan stops at the first lot past 90 days.
fn expiring(member: &Member, limits: &[Timestamp; 3]) -> [i64; 3] {
    let mut sums = [0; 3];
    for lot in &member.lots {
        let Some(expires_at) = lot.expires_at.filter(|at| *at <= limits[2]) else {
            break;
        };
        for (sum, limit) in sums.iter_mut().zip(limits) {
            if expires_at <= *limit {
                *sum += lot.remaining;
            }
        }
    }
    sums
}

/// The members a command may change, of the command's merchant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    Nothing,
    /// Member indexes (over-approximated: a member named here may stay unchanged).
    Members(Vec<u32>),
    /// Possibly every member (a program load, tier re-evaluation at a month's start).
    Every,
}

/// A snapshot in progress: see the module's comment. Plain data; the ledger fills it.
#[derive(Debug)]
pub struct SnapshotCursor {
    merchants: Vec<CursorMerchant>,
    /// Rows taken before a change, not handed out yet.
    captured: VecDeque<SnapshotRow>,
}

#[derive(Debug)]
struct CursorMerchant {
    /// The merchant's name, program and clock (as months and limits) at the position.
    row: RowContext,
    /// Members that existed at the position; later ones are not in the snapshot.
    members: u32,
    /// The next member the walk emits.
    next: u32,
    /// Members ahead of the walk whose row was captured already.
    captured: FxHashSet<u32>,
}

impl CursorMerchant {
    /// Whether the member's row as of the position is out already (or it is not in it).
    fn taken(&self, index: u32) -> bool {
        index >= self.members || index < self.next || self.captured.contains(&index)
    }
}

impl SnapshotCursor {
    /// Every row has been handed out.
    pub fn is_done(&self) -> bool {
        self.captured.is_empty() && self.merchants.iter().all(|m| m.next >= m.members)
    }

    /// Rows not handed out yet, or more (a captured member is counted twice).
    fn rows_left(&self) -> usize {
        let walk_left = self
            .merchants
            .iter()
            .map(|m| m.members.saturating_sub(m.next));
        self.captured.len() + walk_left.map(|left| left as usize).sum::<usize>()
    }

    /// Rows captured and not handed out yet: what copy-on-touch holds in memory.
    pub fn captured_rows(&self) -> usize {
        self.captured.len()
    }

    fn merchant_mut(&mut self, name: &str) -> Option<&mut CursorMerchant> {
        self.merchants.iter_mut().find(|m| &*m.row.merchant == name)
    }
}

impl Ledger {
    /// Starts a snapshot of one merchant (or all) as of now.
    pub fn snapshot_cursor(&self, merchant: Option<&str>) -> SnapshotCursor {
        let merchants = self
            .merchants()
            .filter(|m| merchant.is_none_or(|name| &*m.name == name))
            .map(|m| CursorMerchant {
                row: RowContext::of(m),
                members: u32::try_from(m.members.len()).expect("member indexes are u32"),
                next: 0,
                captured: FxHashSet::default(),
            })
            .collect();
        SnapshotCursor {
            merchants,
            captured: VecDeque::new(),
        }
    }

    /// The next rows, at most `max_rows`: captured ones first, then the walk's.
    pub fn snapshot_next(&self, cursor: &mut SnapshotCursor, max_rows: usize) -> RowBlock {
        let from_captured = cursor.captured.len().min(max_rows);
        // A chunk's room at once: growing the block copied its rows over.
        let mut rows = RowBlock::with_capacity(max_rows.min(cursor.rows_left()));
        for row in cursor.captured.drain(..from_captured) {
            rows.push(row.as_ref());
        }
        for walked in &mut cursor.merchants {
            let Some(merchant) = self.merchants.get(&*walked.row.merchant) else {
                unreachable!("merchants are never removed")
            };
            while rows.len() < max_rows && walked.next < walked.members {
                let index = walked.next;
                walked.next += 1;
                // A captured member's row went out with the captured ones.
                if !walked.captured.remove(&index) {
                    let member = &merchant.members[index as usize];
                    push_row(&mut rows, &walked.row, member);
                }
            }
        }
        rows
    }

    /// Captures, as they are now, the rows of the members `command` may change that the
    /// cursor has not handed out yet. Call before applying it.
    pub fn capture_before(&self, cursor: &mut SnapshotCursor, command: &Command) {
        let Some(merchant) = self.merchants.get(&command.merchant) else {
            return;
        };
        let touched = touched(merchant, command);
        let Some(walked) = cursor.merchant_mut(&command.merchant) else {
            return;
        };
        let context = &walked.row;
        let row = |index: u32| member_row(context, &merchant.members[index as usize]);
        let mut rows = Vec::new();
        match touched {
            Touched::Nothing => return,
            Touched::Members(indexes) => {
                for index in indexes {
                    if !walked.taken(index) {
                        rows.push(row(index));
                        walked.captured.insert(index);
                    }
                }
            }
            // The rest of the walk at once; it is then over for this merchant.
            Touched::Every => {
                let rest = walked.next..walked.members;
                rows.extend(rest.filter(|i| !walked.captured.contains(i)).map(row));
                walked.next = walked.members;
                walked.captured.clear();
            }
        }
        cursor.captured.extend(rows);
    }

    /// Whether any of `entries` changed a member whose row was neither out nor captured:
    /// a command `touched` did not foresee. The snapshot can then no longer be trusted.
    pub fn snapshot_missed(&self, cursor: &SnapshotCursor, entries: &[Entry]) -> bool {
        entries.iter().any(|entry| {
            let index = entry.member.checked_sub(1).map(|i| i as u32);
            cursor
                .merchants
                .iter()
                .find(|m| m.row.merchant == entry.merchant)
                .zip(index)
                .is_some_and(|(walked, index)| !walked.taken(index))
        })
    }
}

/// The members `command` may change in `merchant`: the one it names, the order's or the
/// hold's member, the members with time-driven work due.
pub fn touched(merchant: &Merchant, command: &Command) -> Touched {
    let named = |member: &MemberRef| match resolve(merchant, member, false) {
        Ok(Who::Existing(index) | Who::Activate(index)) => Touched::Members(vec![index]),
        _ => Touched::Nothing,
    };
    let recorded = |key: Result<tally_protocol::IdemKey, String>| {
        let record = key
            .ok()
            .and_then(|key| merchant.receipts.get(&key).map(|r| &r.record));
        match record {
            // An order record's first field is its member.
            Some(Record::Order(order)) => Touched::Members(vec![order.member()]),
            Some(Record::Hold(hold)) => Touched::Members(vec![hold.member]),
            _ => Touched::Nothing,
        }
    };
    match &command.body {
        Body::Purchase(order) => named(&order.member),
        Body::Hold(hold) => named(&hold.member),
        Body::Adjust(adjust) => named(&adjust.member),
        Body::Event(event) => named(&event.member),
        Body::Link(link) => named(&link.member),
        Body::Return(ret) => recorded(ret.order.resolve(&command.origin)),
        Body::Capture(capture) => recorded(capture.hold.resolve(&command.origin)),
        Body::Release(release) => recorded(release.hold.resolve(&command.origin)),
        Body::Enroll(enroll) => {
            let aliases = [
                enroll.phone.clone().map(Alias::Phone),
                enroll.card.clone().map(Alias::Card),
            ];
            let indexes = aliases
                .into_iter()
                .flatten()
                .filter_map(|alias| alias_of(merchant.program(), &alias).ok())
                .filter_map(|alias| merchant.aliases.get(&alias).copied())
                .collect();
            Touched::Members(indexes)
        }
        Body::Tick(_) => touched_by_tick(merchant, command.at),
        Body::LoadProgram(_) => Touched::Every,
        // Queries, new cards, and promotion state, tags and assignments (not in a row).
        Body::Quote(_)
        | Body::Statement(_)
        | Body::Balance(_)
        | Body::Snapshot(_)
        | Body::IssueCards(_)
        | Body::IssueCodes(_)
        | Body::AssignPromotion(_)
        | Body::Tag(_) => Touched::Nothing,
    }
}

/// Members whose timers are due by `at`, and those with a birthday on a day that starts by
/// then; every member when a month starts (counters are pruned, tiers re-evaluated).
fn touched_by_tick(merchant: &Merchant, at: Timestamp) -> Touched {
    if merchant.next_month_start.is_some_and(|start| start <= at) {
        return Touched::Every;
    }
    let mut indexes = Vec::new();
    let due = merchant.timers.iter().take_while(|(due, _)| *due <= at);
    indexes.extend(due.map(|(_, index)| *index));
    if let Some(start) = merchant.next_day_start.filter(|start| *start <= at) {
        let program = merchant.program();
        let (mut day, last) = (local_date(program, start), local_date(program, at));
        let mut days = 0;
        while day <= last {
            days += 1;
            if days > MAX_BIRTHDAY_DAYS_NAMED {
                return Touched::Every;
            }
            let mut keys = vec![(day.month(), day.day())];
            // Those born on 29 February may celebrate on the 28th.
            if keys[0] == (2, 28) {
                keys.push((2, 29));
            }
            for key in keys {
                indexes.extend(merchant.birthdays.get(&key).into_iter().flatten());
            }
            day = day.succ_opt().expect("date in range");
        }
    }
    Touched::Members(indexes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::{tick_command, tick_if_due};
    use crate::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

    /// Applies `command` as the engine does (the tick due first), capturing for `cursor`.
    fn apply_capturing(ledger: &mut Ledger, cursor: &mut SnapshotCursor, command: &Command) {
        let now = command.at;
        if ledger
            .due_at(&command.merchant)
            .is_some_and(|due| due <= now)
        {
            ledger.capture_before(cursor, &tick_command(&command.merchant, now));
        }
        ledger.capture_before(cursor, command);
        tick_if_due(ledger, &command.merchant, now);
        let result = ledger.apply_shared(command, now);
        if command.key.text().contains("x-") {
            assert!(result.applied().is_some(), "{}", result.to_json_line());
        }
        assert!(
            !ledger.snapshot_missed(cursor, ledger.entries()),
            "a change not foreseen: {command:?}"
        );
        ledger.clear_outbox();
    }

    /// An operator's or a terminal's command at `at`, from its JSON form's body.
    fn sent(at: Timestamp, who: &str, txn: &str, body: &str) -> Command {
        let line = format!(
            r#"{{"merchant":"demo",{who},"txn":"{txn}","at":"{}",{body}}}"#,
            at.to_rfc3339()
        );
        tally_protocol::parse_command_line(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The workload (purchases, returns, events, quotes, promotions; ticks) and, by hand,
    /// adjustments, holds captured and released, a link, an enrolment, a program load.
    fn commands() -> Vec<Command> {
        let mut commands: Vec<Command> = Workload::new(WorkloadConfig::demo(150))
            .take(6000)
            .collect();
        let (admin, pos) = (r#""admin":"ops""#, r#""terminal":"pos-1""#);
        let version_2 = DEMO_PROGRAM.replace("version = 1", "version = 2");
        let load = serde_json::json!({ "load_program": { "program": version_2 } }).to_string();
        let by_hand = [
            (
                2900,
                admin,
                r#""adjust":{"member":{"id":40},"points":500,"reason":"goodwill"}"#,
            ),
            (
                2901,
                admin,
                r#""adjust":{"member":{"id":41},"points":500,"reason":"goodwill"}"#,
            ),
            (3100, pos, r#""hold":{"member":{"id":40},"points":100}"#),
            (
                3150,
                pos,
                r#""capture":{"hold":{"txn":"x-3100"},"points":60}"#,
            ),
            (3200, pos, r#""hold":{"member":{"id":41},"points":100}"#),
            (3250, pos, r#""release":{"hold":{"txn":"x-3200"}}"#),
            (
                3300,
                pos,
                r#""link":{"member":{"id":42},"alias":{"card":"X-42"}}"#,
            ),
            (
                3350,
                admin,
                r#""adjust":{"member":{"id":43},"points":25,"reason":"correction"}"#,
            ),
            (3400, pos, r#""enroll":{"phone":"+15550109999"}"#),
            (5000, admin, &load[1..load.len() - 1]),
        ];
        // From the last place backwards, so that the places stay right.
        for (place, who, body) in by_hand.into_iter().rev() {
            let at = commands[place].at;
            commands.insert(place, sent(at, who, &format!("x-{place}"), body));
        }
        commands
    }

    #[test]
    fn a_cursor_shows_the_state_at_its_start_while_every_kind_of_command_goes_on() {
        let commands = commands();
        let mut ledger = Ledger::new();
        ledger
            .install_program(DEMO_PROGRAM, commands[0].at)
            .unwrap();
        let (before, after) = commands.split_at(3000);
        let mut unused = Ledger::new().snapshot_cursor(None);
        for command in before {
            apply_capturing(&mut ledger, &mut unused, command);
        }
        let expected: Vec<SnapshotRow> = ledger.snapshot(None).collect();
        let mut cursor = ledger.snapshot_cursor(None);
        let mut rows = Vec::new();
        // One row every 25 commands: most members change before the walk reaches them.
        for (index, command) in after.iter().enumerate() {
            apply_capturing(&mut ledger, &mut cursor, command);
            if index % 25 == 0 {
                rows.extend(
                    ledger
                        .snapshot_next(&mut cursor, 1)
                        .iter()
                        .map(|row| row.to_row()),
                );
            }
        }
        assert!(
            !cursor.is_done(),
            "the walk was still going when commands stopped"
        );
        while !cursor.is_done() {
            rows.extend(
                ledger
                    .snapshot_next(&mut cursor, 64)
                    .iter()
                    .map(|row| row.to_row()),
            );
        }
        rows.sort_by(|a, b| (&a.merchant, a.numbers.member).cmp(&(&b.merchant, b.numbers.member)));
        assert_eq!(rows.len(), expected.len());
        assert_eq!(rows, expected);
        let now: Vec<SnapshotRow> = ledger.snapshot(None).collect();
        assert_ne!(
            now[..expected.len()],
            expected[..],
            "members changed meanwhile"
        );
    }
}
