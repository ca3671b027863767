//! Holds reserve points or credit for a payment in progress. The reserved amount leaves the
//! balance at once (a `hold` entry, taking lots like a spend); a capture turns it into a
//! redemption, a release or a lapse gives it back to the same lots.

use std::hash::Hash;

use hashbrown::Equivalent;
use serde::{Deserialize, Serialize};
use tally_protocol::{Applied, Capture, EntryKind, Hold, IdemKey, Reason, Release, Wallet};

use super::member::{OpenHold, Slice};
use super::members::{debit_points, resolve, Who};
use super::{finish_member, reject, Books, Ctx, Merchant, ReceiptKey, Record, Rejection};
use crate::money::{from_minor, to_minor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldState {
    Open,
    Captured,
    Released,
    Lapsed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldRecord {
    pub member: u32,
    pub points: i64,
    pub credit_minor: i64,
    pub slices: super::Lots,
    pub state: HoldState,
}

pub fn hold(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    hold: &Hold,
) -> Result<(Applied, Record), Rejection> {
    let (Who::Existing(index) | Who::Activate(index)) = resolve(merchant, &hold.member, false)?
    else {
        unreachable!("resolve without enrolment finds or rejects")
    };
    let credit =
        to_minor(hold.credit, ctx.program.minor_units).or_else(|m| reject(Reason::Invalid, m))?;
    if !(0..super::ORDER_MINOR_MAX).contains(&hold.points)
        || !(0..super::ORDER_MINOR_MAX).contains(&credit)
        || hold.points == 0 && credit == 0
    {
        return reject(
            Reason::Invalid,
            "a hold reserves a positive number of points or amount of credit",
        );
    }
    let member = &mut merchant.members[index as usize];
    if hold.points > member.available_points() {
        return reject(
            Reason::InsufficientPoints,
            format!(
                "{} points needed, {} available",
                hold.points,
                member.available_points()
            ),
        );
    }
    if credit > member.credit_minor {
        return reject(
            Reason::InsufficientCredit,
            "the member does not have that much store credit",
        );
    }
    let slices = debit_points(member, books, ctx, EntryKind::Hold, hold.points, None);
    member.held_points += hold.points;
    member.credit_minor -= credit;
    member.held_credit_minor += credit;
    books.post(
        ctx,
        member,
        Wallet::Credit,
        EntryKind::Hold,
        -credit,
        None,
        Vec::new(),
    );
    let deadline = ctx.now + ctx.program.hold_timeout;
    member.open_holds.push(OpenHold {
        deadline,
        key: ctx.key.clone(),
    });
    let tier = member.tier;
    let record = HoldRecord {
        member: index,
        points: hold.points,
        credit_minor: credit,
        slices,
        state: HoldState::Open,
    };
    let mut applied = Applied::default();
    finish_member(merchant, ctx, index, false, tier, &mut applied);
    Ok((applied, Record::Hold(Box::new(record))))
}

/// The open hold under `key`, or why it cannot be used.
pub fn open_hold<'m>(merchant: &'m Merchant, key: &IdemKey) -> Result<&'m HoldRecord, Rejection> {
    match merchant.receipts.get(key).map(|receipt| &receipt.record) {
        Some(Record::Hold(hold)) if hold.state == HoldState::Open => Ok(hold),
        Some(Record::Hold(hold)) => reject(
            Reason::HoldClosed,
            format!("the hold {key} is already {:?}", hold.state).to_lowercase(),
        ),
        _ => reject(Reason::UnknownHold, format!("no hold {key}")),
    }
}

pub fn capture(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    capture: &Capture,
) -> Result<Applied, Rejection> {
    let key = capture
        .hold
        .resolve(ctx.origin)
        .or_else(|m| reject(Reason::Invalid, m))?;
    let hold = open_hold(merchant, &key)?;
    let points = capture.points.unwrap_or(hold.points);
    let credit = match capture.credit {
        Some(credit) => {
            to_minor(credit, ctx.program.minor_units).or_else(|m| reject(Reason::Invalid, m))?
        }
        None => hold.credit_minor,
    };
    if !(0..=hold.points).contains(&points) || !(0..=hold.credit_minor).contains(&credit) {
        return reject(
            Reason::Invalid,
            "a capture takes at most what the hold reserved",
        );
    }
    let index = hold.member;
    let tier = merchant.members[index as usize].tier;
    close(
        merchant,
        books,
        ctx,
        &key,
        HoldState::Captured,
        points,
        credit,
    );
    let mut applied = Applied {
        points_redeemed: points,
        credit_redeemed: from_minor(credit, ctx.program.minor_units),
        ..Applied::default()
    };
    finish_member(merchant, ctx, index, false, tier, &mut applied);
    Ok(applied)
}

pub fn release(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    release: &Release,
) -> Result<Applied, Rejection> {
    let key = release
        .hold
        .resolve(ctx.origin)
        .or_else(|m| reject(Reason::Invalid, m))?;
    let index = open_hold(merchant, &key)?.member;
    let tier = merchant.members[index as usize].tier;
    close(merchant, books, ctx, &key, HoldState::Released, 0, 0);
    let mut applied = Applied::default();
    finish_member(merchant, ctx, index, false, tier, &mut applied);
    Ok(applied)
}

/// Captures a whole hold as an order's payment; returns the lots it had reserved.
pub fn capture_for_order(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    key: &IdemKey,
) -> Vec<Slice> {
    let hold = open_hold(merchant, key).expect("the plan checked the hold is open");
    let reserved = hold.slices.to_vec();
    let (points, credit) = (hold.points, hold.credit_minor);
    close(
        merchant,
        books,
        ctx,
        key,
        HoldState::Captured,
        points,
        credit,
    );
    reserved
}

/// Lapses the member's holds whose deadline has passed; returns how many.
pub fn lapse_due(merchant: &mut Merchant, books: &mut Books, ctx: &Ctx, index: u32) -> u64 {
    let due: Vec<ReceiptKey> = merchant.members[index as usize]
        .open_holds
        .iter()
        .filter(|hold| hold.deadline <= ctx.now)
        .map(|hold| hold.key.clone())
        .collect();
    for key in &due {
        close(merchant, books, ctx, key, HoldState::Lapsed, 0, 0);
    }
    due.len() as u64
}

/// Closes an open hold: the reserved amount is released (`release` entries) and the captured
/// part redeemed (`redemption` entries). Only the part not captured goes back into lots.
fn close<Key: Hash + Equivalent<ReceiptKey> + ?Sized>(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    key: &Key,
    state: HoldState,
    points: i64,
    credit: i64,
) {
    let receipt = merchant
        .receipts
        .get_mut(key)
        .expect("an open hold has a receipt");
    let Record::Hold(hold) = &mut receipt.record else {
        unreachable!("checked to be a hold")
    };
    assert_eq!(hold.state, HoldState::Open, "only an open hold closes");
    hold.state = state;
    let hold = (**hold).clone();
    let member = &mut merchant.members[hold.member as usize];
    member.open_holds.retain(|open| !key.equivalent(&open.key));
    let (captured, kept) = split_slices(&hold.slices, points);
    member.held_points -= hold.points;
    member.restore(&kept);
    books.post(
        ctx,
        member,
        Wallet::Points,
        EntryKind::Release,
        hold.points,
        None,
        hold.slices.clone(),
    );
    books.post(
        ctx,
        member,
        Wallet::Points,
        EntryKind::Redemption,
        -points,
        None,
        captured,
    );
    member.held_credit_minor -= hold.credit_minor;
    member.credit_minor += hold.credit_minor - credit;
    books.post(
        ctx,
        member,
        Wallet::Credit,
        EntryKind::Release,
        hold.credit_minor,
        None,
        Vec::new(),
    );
    books.post(
        ctx,
        member,
        Wallet::Credit,
        EntryKind::Redemption,
        -credit,
        None,
        Vec::new(),
    );
}

/// Splits slices into the first `points` points and the rest.
pub fn split_slices(slices: &[Slice], points: i64) -> (Vec<Slice>, Vec<Slice>) {
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    let mut left = points;
    for slice in slices {
        let take = left.min(slice.points);
        left -= take;
        if take > 0 {
            first.push(Slice {
                points: take,
                ..*slice
            });
        }
        if slice.points > take {
            rest.push(Slice {
                points: slice.points - take,
                ..*slice
            });
        }
    }
    (first, rest)
}
