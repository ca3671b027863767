//! A member's wallets, lots and tier counters, and the lot operations every command uses.

use serde::{Deserialize, Serialize};

use super::micros;
use super::seqs::EntrySeqs;
use super::sorted_deque::{Place, SortedDeque};
use super::ReceiptKey;
use tally_protocol::Alias;
use tally_protocol::Name;

use crate::Timestamp;

/// The lots an entry touched: almost always one, kept inline without an allocation.
pub type Lots = smallvec::SmallVec<[Slice; 1]>;

/// A slice of a lot that a spend, a hold or a clawback took. It keeps the lot's times so the
/// points can go back to the same lot (with the same expiry) even if the lot was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slice {
    pub lot: u32,
    pub points: i64,
    #[serde(with = "micros")]
    pub earned_at: Timestamp,
    #[serde(with = "micros::option")]
    pub expires_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lot {
    pub id: u32,
    pub original: i64,
    pub remaining: i64,
    #[serde(with = "micros")]
    pub earned_at: Timestamp,
    #[serde(with = "micros")]
    pub available_at: Timestamp,
    #[serde(with = "micros::option")]
    pub expires_at: Option<Timestamp>,
    /// Not yet spendable; its points count in `Member::pending_points`.
    pub pending: bool,
}

/// Lots are kept in spending order: earliest expiry first, never-expiring last, then by id.
type SpendOrder = (bool, Option<Timestamp>, u32);

fn spend_order(expires_at: Option<Timestamp>, id: u32) -> SpendOrder {
    (expires_at.is_none(), expires_at, id)
}

impl Lot {
    fn spend_order(&self) -> SpendOrder {
        spend_order(self.expires_at, self.id)
    }
}

/// Totals that tier thresholds read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Totals {
    pub points_earned: i64,
    pub amount_spent_minor: i64,
    pub orders: i64,
}

impl Totals {
    pub fn add(&mut self, delta: Totals) {
        self.points_earned += delta.points_earned;
        self.amount_spent_minor += delta.amount_spent_minor;
        self.orders += delta.orders;
    }
}

/// Lifetime totals and per-month totals (local months, `year * 12 + month0`) for windows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counters {
    pub lifetime: Totals,
    pub months: Vec<(i32, Totals)>,
}

impl Counters {
    pub fn add(&mut self, month: i32, delta: Totals, months_kept: u32) {
        self.lifetime.add(delta);
        if months_kept == 0 {
            return;
        }
        match self.months.binary_search_by_key(&month, |(m, _)| *m) {
            Ok(i) => self.months[i].1.add(delta),
            Err(i) => self.months.insert(i, (month, delta)),
        }
    }

    /// Sum of the months `first..=last`.
    pub fn sum(&self, first: i32, last: i32) -> Totals {
        let mut total = Totals::default();
        for (_, totals) in self
            .months
            .iter()
            .filter(|(m, _)| (first..=last).contains(m))
        {
            total.add(*totals);
        }
        total
    }

    /// Forgets months no window can reach any more.
    pub fn prune(&mut self, current_month: i32, months_kept: u32) {
        let first_kept = current_month - months_kept as i32 + 1;
        self.months.retain(|(m, _)| *m >= first_kept);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpenHold {
    #[serde(with = "micros")]
    pub deadline: Timestamp,
    pub key: ReceiptKey,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id: u64,
    /// `None` for a card issued in bulk and not used yet.
    #[serde(with = "micros::option")]
    pub enrolled_at: Option<Timestamp>,
    pub birthday: Option<(u32, u32)>,
    pub tags: Vec<String>,
    pub aliases: Vec<Alias>,
    /// Points balance: the sum of all points entries, and of live lots less debt.
    pub points: i64,
    pub pending_points: i64,
    /// Points owed after a return took back more than was there (`negative_balance = "allow"`);
    /// new points pay it off first.
    pub debt_points: i64,
    pub held_points: i64,
    pub credit_minor: i64,
    pub held_credit_minor: i64,
    /// Live lots in spending order. A busy member has many: every operation on them is
    /// amortised O(1) at the ends or O(log n) by binary search, never a scan per command,
    /// and an insert in the middle moves one chunk.
    pub lots: SortedDeque<Lot>,
    /// Pending lots by the time they become available: (available_at, expires_at, lot).
    #[serde(with = "micros::pending")]
    pub pending_queue: SortedDeque<(Timestamp, Option<Timestamp>, u32)>,
    pub next_lot: u32,
    /// Index of the tier in the merchant's current program.
    pub tier: Option<usize>,
    pub counters: Counters,
    /// Running sums of the entries written for this member, checked against the balances.
    pub entry_points: i64,
    pub entry_credit_minor: i64,
    pub event_counts: Vec<(Name, u32)>,
    pub last_birthday_year: i32,
    pub open_holds: Vec<OpenHold>,
    /// The earliest time-driven work registered in the merchant's timer queue.
    #[serde(with = "micros::option")]
    pub timer_at: Option<Timestamp>,
    /// The numbers of the entries written for this member, oldest first: its statement.
    pub history: EntrySeqs,
}

impl Member {
    pub fn new(id: u64, enrolled_at: Option<Timestamp>) -> Member {
        Member {
            id,
            enrolled_at,
            birthday: None,
            tags: Vec::new(),
            aliases: Vec::new(),
            points: 0,
            pending_points: 0,
            debt_points: 0,
            held_points: 0,
            credit_minor: 0,
            held_credit_minor: 0,
            lots: SortedDeque::default(),
            pending_queue: SortedDeque::default(),
            next_lot: 1,
            tier: None,
            counters: Counters::default(),
            entry_points: 0,
            entry_credit_minor: 0,
            event_counts: Vec::new(),
            last_birthday_year: i32::MIN,
            open_holds: Vec::new(),
            timer_at: None,
            history: EntrySeqs::default(),
        }
    }

    /// Points that can be spent now.
    pub fn available_points(&self) -> i64 {
        self.points - self.pending_points
    }

    /// Adds a lot of `points` (after paying off any debt) and returns its id.
    pub fn add_lot(
        &mut self,
        points: i64,
        earned_at: Timestamp,
        available_at: Timestamp,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> u32 {
        assert!(points > 0, "a lot holds a positive number of points");
        let id = self.next_lot;
        self.next_lot += 1;
        let paid_debt = points.min(self.debt_points);
        self.debt_points -= paid_debt;
        self.points += points;
        let remaining = points - paid_debt;
        if remaining > 0 {
            let pending = available_at > now;
            if pending {
                self.pending_points += remaining;
                let entry = (available_at, expires_at, id);
                self.pending_queue.insert(entry, |queued| *queued <= entry);
            }
            self.insert_lot(Lot {
                id,
                original: points,
                remaining,
                earned_at,
                available_at,
                expires_at,
                pending,
            });
        }
        id
    }

    fn insert_lot(&mut self, lot: Lot) {
        let key = lot.spend_order();
        self.lots.insert(lot, |other| other.spend_order() < key);
    }

    /// Drops emptied lots: from the front cheaply, elsewhere only if some were emptied there.
    fn drop_empty(&mut self, emptied_inside: bool) {
        while self.lots.front().is_some_and(|lot| lot.remaining == 0) {
            self.lots.pop_front();
        }
        if emptied_inside {
            self.lots.retain(|lot| lot.remaining > 0);
        }
    }

    /// Takes `points` from available lots, earliest expiry first. The caller has checked
    /// that enough points are available.
    pub fn spend(&mut self, points: i64) -> Lots {
        if points == 0 {
            return Lots::new();
        }
        assert!(
            points > 0 && points <= self.available_points(),
            "spend beyond available points"
        );
        let mut slices = Lots::new();
        let mut left = points;
        let mut emptied_inside = false;
        let mut skipped_pending = false;
        for lot in self.lots.iter_mut() {
            if left == 0 {
                break;
            }
            if lot.pending {
                skipped_pending = true;
                continue;
            }
            let take = left.min(lot.remaining);
            lot.remaining -= take;
            left -= take;
            emptied_inside |= skipped_pending && lot.remaining == 0;
            slices.push(slice_of(lot, take));
        }
        assert_eq!(left, 0, "available points not backed by lots");
        self.points -= points;
        self.drop_empty(emptied_inside);
        slices
    }

    /// Takes points back after a return: pending lots first (the order's own first), then the
    /// order's own lot, then the others in spending order. Returns what was taken and how
    /// many points were missing.
    pub fn claw_back(&mut self, points: i64, own_lot: Option<u32>) -> (Vec<Slice>, i64) {
        let mut slices = Vec::new();
        let mut left = points;
        // The order's own lot is recent: look for it from the back.
        let own = own_lot.and_then(|id| self.lots.rposition(|lot| lot.id == id));
        let own_pending = own.filter(|&at| self.lots[at].pending);
        if let Some(at) = own_pending {
            take(
                &mut self.lots[at],
                &mut self.pending_points,
                &mut left,
                &mut slices,
            );
        }
        for &(_, expires_at, id) in self.pending_queue.iter() {
            if left == 0 {
                break;
            }
            if let Some(at) =
                position(&self.lots, expires_at, id).filter(|&at| Some(at) != own_pending)
            {
                take(
                    &mut self.lots[at],
                    &mut self.pending_points,
                    &mut left,
                    &mut slices,
                );
            }
        }
        if let Some(at) = own.filter(|&at| !self.lots[at].pending) {
            take(
                &mut self.lots[at],
                &mut self.pending_points,
                &mut left,
                &mut slices,
            );
        }
        for lot in self.lots.iter_mut() {
            if left == 0 {
                break;
            }
            if !lot.pending {
                take(lot, &mut self.pending_points, &mut left, &mut slices);
            }
        }
        self.points -= points - left;
        // Remove emptied lots one by one, from the back: earlier places stay valid.
        let mut emptied: Vec<Place> = Vec::with_capacity(slices.len());
        for slice in &slices {
            if let Some(at) = position(&self.lots, slice.expires_at, slice.lot)
                .filter(|&at| self.lots[at].remaining == 0)
            {
                emptied.push(at);
            }
        }
        emptied.sort_unstable_by(|a, b| b.cmp(a));
        emptied.dedup();
        for at in emptied {
            self.lots.remove(at);
        }
        (slices, left)
    }

    /// Puts slices back into their lots, recreating emptied ones with their original times.
    pub fn restore(&mut self, slices: &[Slice]) {
        for slice in slices {
            let mut points = slice.points;
            let paid_debt = points.min(self.debt_points);
            self.debt_points -= paid_debt;
            self.points += points;
            points -= paid_debt;
            if points == 0 {
                continue;
            }
            match position(&self.lots, slice.expires_at, slice.lot) {
                Some(at) => {
                    let lot = &mut self.lots[at];
                    lot.remaining += points;
                    if lot.pending {
                        self.pending_points += points;
                    }
                }
                None => self.insert_lot(Lot {
                    id: slice.lot,
                    original: slice.points,
                    remaining: points,
                    earned_at: slice.earned_at,
                    available_at: slice.earned_at,
                    expires_at: slice.expires_at,
                    pending: false,
                }),
            }
        }
    }

    /// Releases pending lots that are available at `now`; returns the points released.
    pub fn release_pending(&mut self, now: Timestamp) -> i64 {
        let mut released = 0;
        while let Some(&(available_at, expires_at, id)) = self.pending_queue.front() {
            if available_at > now {
                break;
            }
            self.pending_queue.pop_front();
            if let Some(at) = position(&self.lots, expires_at, id) {
                let lot = &mut self.lots[at];
                lot.pending = false;
                released += lot.remaining;
            }
        }
        self.pending_points -= released;
        released
    }

    /// Removes lots that have expired at `now` (they are at the front); returns the slices.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Slice> {
        let mut expired = Vec::new();
        while let Some(lot) = self.lots.front() {
            if lot.expires_at.is_none_or(|at| at > now) {
                break;
            }
            let lot = self.lots.pop_front().expect("front exists");
            if lot.pending {
                self.pending_points -= lot.remaining;
            }
            self.points -= lot.remaining;
            expired.push(slice_of(&lot, lot.remaining));
        }
        expired
    }

    /// The next time something about this member changes by itself.
    pub fn next_due(&self) -> Option<Timestamp> {
        let expiry = self.lots.front().and_then(|lot| lot.expires_at);
        let pending = self.pending_queue.front().map(|(at, _, _)| *at);
        let hold = self.open_holds.iter().map(|hold| hold.deadline).min();
        [expiry, pending, hold].into_iter().flatten().min()
    }

    pub fn event_count(&self, rule: &str) -> u32 {
        self.event_counts
            .iter()
            .find(|(id, _)| &**id == rule)
            .map_or(0, |(_, n)| *n)
    }

    pub fn count_event(&mut self, rule: &Name) {
        match self.event_counts.iter_mut().find(|(id, _)| id == rule) {
            Some((_, count)) => *count += 1,
            None => self.event_counts.push((rule.clone(), 1)),
        }
    }

    /// Conservation: balance = sum of entries = live lots less debt; pending and held agree
    /// with the lots and holds. Cheap checks run after every command; the full recount of
    /// lots runs in debug builds and in `Ledger::verify`.
    pub fn assert_conserved(&self, full: bool) {
        assert_eq!(
            self.points, self.entry_points,
            "member {}: points balance differs from its entries",
            self.id
        );
        assert_eq!(
            self.credit_minor, self.entry_credit_minor,
            "member {}: credit balance differs from its entries",
            self.id
        );
        assert!(self.debt_points >= 0 && self.held_points >= 0 && self.held_credit_minor >= 0);
        if full || cfg!(debug_assertions) {
            let live: i64 = self.lots.iter().map(|lot| lot.remaining).sum();
            assert_eq!(
                self.points,
                live - self.debt_points,
                "member {}: points balance differs from its lots",
                self.id
            );
            let pending: i64 = self
                .lots
                .iter()
                .filter(|lot| lot.pending)
                .map(|lot| lot.remaining)
                .sum();
            assert_eq!(
                self.pending_points, pending,
                "member {}: pending points differ from pending lots",
                self.id
            );
            assert!(
                self.lots.iter().all(|lot| lot.remaining > 0),
                "member {}: an empty lot is kept",
                self.id
            );
            assert!(
                self.lots
                    .iter()
                    .zip(self.lots.iter().skip(1))
                    .all(|(a, b)| a.spend_order() < b.spend_order()),
                "member {}: lots out of spending order",
                self.id
            );
            // A sorted copy of the queue's lot ids: one check per lot stays O(log n).
            let mut queued: Vec<u32> = self.pending_queue.iter().map(|(_, _, id)| *id).collect();
            queued.sort_unstable();
            assert!(
                self.lots
                    .iter()
                    .filter(|lot| lot.pending)
                    .all(|lot| queued.binary_search(&lot.id).is_ok()),
                "member {}: a pending lot is not queued",
                self.id
            );
        }
    }
}

/// Where lot `id`, expiring at `expires_at`, is among `lots`.
fn position(lots: &SortedDeque<Lot>, expires_at: Option<Timestamp>, id: u32) -> Option<Place> {
    let key = spend_order(expires_at, id);
    let at = lots.partition_point(|lot| lot.spend_order() < key)?;
    (lots.get(at).is_some_and(|lot| lot.id == id)).then_some(at)
}

/// Takes up to `left` points from `lot`.
fn take(lot: &mut Lot, pending_points: &mut i64, left: &mut i64, slices: &mut Vec<Slice>) {
    let taken = (*left).min(lot.remaining);
    if taken == 0 {
        return;
    }
    lot.remaining -= taken;
    if lot.pending {
        *pending_points -= taken;
    }
    *left -= taken;
    slices.push(slice_of(lot, taken));
}

fn slice_of(lot: &Lot, points: i64) -> Slice {
    Slice {
        lot: lot.id,
        points,
        earned_at: lot.earned_at,
        expires_at: lot.expires_at,
    }
}
