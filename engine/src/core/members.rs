//! Members: finding them by id or alias, enrolment (explicit, automatic, or by first use of
//! a bulk-issued card), aliases, events and bonuses, manual adjustments, program changes.

use std::sync::Arc;

use tally_protocol::{
    Adjust, Alias, Applied, Enroll, EntryKind, Event, IssueCards, Link, MemberRef, Name, Reason,
    Wallet,
};

use super::member::{Member, Totals};
use super::time::{expiry_of, month_index, schedule_boundaries};
use super::{
    finish_member, normalize_phone, normalized_phone, reject, tiers, Books, Ctx, Merchant,
    Rejection, MAX_CARDS_PER_COMMAND, ORDER_MINOR_MAX,
};
use crate::money::{to_minor, RATE_SCALE};
use crate::program::{parse_and_compile, Filter, Program};
use crate::Timestamp;

/// The event every new member gets once: the registration bonus.
pub const ACCOUNT_CREATED: &str = "account_created";
pub const BIRTHDAY: &str = "birthday";
const MAX_ALIAS_LEN: usize = 64;
const MAX_TAGS: usize = 32;

/// Who a command is about, before anything changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    Existing(u32),
    /// A bulk-issued card used for the first time.
    Activate(u32),
    /// An unknown alias on an order: the member is enrolled on the spot.
    New(Alias),
}

pub fn alias_of(program: &Program, alias: &Alias) -> Result<Alias, Rejection> {
    match alias {
        Alias::Phone(raw) => match normalize_phone(raw, &program.country_code) {
            Ok(phone) => Ok(Alias::Phone(phone)),
            Err(message) => reject(Reason::Invalid, message),
        },
        Alias::Card(raw) => Ok(Alias::Card(card_number(raw)?.to_string())),
    }
}

/// A card number as it is kept: trimmed, 1 to `MAX_ALIAS_LEN` bytes.
fn card_number(raw: &str) -> Result<&str, Rejection> {
    let card = raw.trim();
    if card.is_empty() || card.len() > MAX_ALIAS_LEN {
        return reject(
            Reason::Invalid,
            format!("card number must be 1 to {MAX_ALIAS_LEN} characters"),
        );
    }
    Ok(card)
}

pub fn resolve(merchant: &Merchant, member: &MemberRef, may_enrol: bool) -> Result<Who, Rejection> {
    // Looked up as normalised text, borrowed: an owned `Alias` is made only to enrol.
    let phone;
    let alias = match member {
        MemberRef::Id(id) => {
            let index = id
                .checked_sub(1)
                .filter(|i| *i < merchant.members.len() as u64);
            return match index {
                Some(index) => Ok(known(merchant, index as u32)),
                None => reject(Reason::UnknownMember, format!("no member has id {id}")),
            };
        }
        MemberRef::Phone(raw) => {
            phone = normalized_phone(raw, &merchant.program().country_code)
                .or_else(|message| reject(Reason::Invalid, message))?;
            AliasText::Phone(&phone)
        }
        MemberRef::Card(raw) => AliasText::Card(card_number(raw)?),
    };
    match merchant.aliases.get(&alias) {
        Some(&index) => Ok(known(merchant, index)),
        None if may_enrol => Ok(Who::New(alias.to_alias())),
        None => reject(Reason::UnknownMember, "no member has this phone or card"),
    }
}

/// Asks for the member `member` names, if it has one already, without waiting for it and
/// without changing anything: `Ledger::warm`.
pub fn warm(merchant: &Merchant, member: &MemberRef) {
    let index = match member {
        MemberRef::Id(id) => id.checked_sub(1).map(|i| i as usize),
        // A phone is normalised into a new string first: not worth it for a hint.
        MemberRef::Phone(_) => None,
        MemberRef::Card(raw) => card_number(raw)
            .ok()
            .and_then(|card| merchant.aliases.get(&AliasText::Card(card)))
            .map(|&index| index as usize),
    };
    if let Some(member) = index.and_then(|index| merchant.members.get(index)) {
        super::prefetch::prefetch(member, MEMBER_LINES);
    }
}

/// Cache lines a `Member` spans.
const MEMBER_LINES: usize = std::mem::size_of::<Member>().div_ceil(64);

/// An alias as normalised text, borrowed: found in a map of `Alias`es without making one.
/// Its variants are `Alias`'s, in the same order, so the derived `Hash` writes the same
/// bytes (`hashes_as_an_alias_does` checks it).
#[derive(Debug, Hash)]
enum AliasText<'a> {
    Phone(&'a str),
    Card(&'a str),
}

impl AliasText<'_> {
    fn to_alias(&self) -> Alias {
        match *self {
            AliasText::Phone(phone) => Alias::Phone(phone.to_string()),
            AliasText::Card(card) => Alias::Card(card.to_string()),
        }
    }
}

impl hashbrown::Equivalent<Alias> for AliasText<'_> {
    fn equivalent(&self, alias: &Alias) -> bool {
        match (self, alias) {
            (AliasText::Phone(text), Alias::Phone(phone)) => *text == phone,
            (AliasText::Card(text), Alias::Card(card)) => *text == card,
            _ => false,
        }
    }
}

fn known(merchant: &Merchant, index: u32) -> Who {
    match merchant.members[index as usize].enrolled_at {
        Some(_) => Who::Existing(index),
        None => Who::Activate(index),
    }
}

/// Makes `who` a member index, enrolling or activating it (with its registration bonus).
/// Returns the index, whether the member was enrolled now, and the registration bonus.
pub fn materialize(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    who: &Who,
) -> (u32, bool, i64) {
    let index = match who {
        Who::Existing(index) => return (*index, false, 0),
        Who::Activate(index) => *index,
        Who::New(alias) => add_member(merchant, None, vec![alias.clone()]),
    };
    let bonus = enrol(merchant, books, ctx, index);
    (index, true, bonus)
}

/// Enrols (or activates) a member now: registration bonus, and the entry tier if any.
fn enrol(merchant: &mut Merchant, books: &mut Books, ctx: &Ctx, index: u32) -> i64 {
    merchant.members[index as usize].enrolled_at = Some(ctx.at);
    let bonus = award_event(merchant, books, ctx, index, ACCOUNT_CREATED);
    let member = &mut merchant.members[index as usize];
    tiers::rise(&ctx.program, member, ctx.now_month());
    bonus
}

/// Adds a member with the given aliases (which the caller has checked are free).
fn add_member(merchant: &mut Merchant, enrolled_at: Option<Timestamp>, aliases: Vec<Alias>) -> u32 {
    let index = merchant.members.len() as u32;
    let mut member = Member::new(u64::from(index) + 1, enrolled_at);
    for alias in &aliases {
        let previous = merchant.aliases.insert(alias.clone(), index);
        assert!(previous.is_none(), "an alias must never name two members");
    }
    member.aliases = aliases;
    merchant.members.push(member);
    index
}

/// Does a rule's filter hold for this member at the command's instant (`ctx.at`)? Order
/// filters are checked by the caller.
pub fn filter_holds(ctx: &Ctx, filter: &Filter, tier: Option<usize>) -> bool {
    let at = ctx.at;
    if filter.valid_from.is_some_and(|from| at < from) || filter.valid_to.is_some_and(|to| at >= to)
    {
        return false;
    }
    if !filter.tiers.is_empty() && !tier.is_some_and(|t| filter.tiers.contains(&t)) {
        return false;
    }
    if filter.weekdays == 0 && filter.hours.is_none() {
        return true;
    }
    let (weekday, minute) = ctx.at_weekday_minute();
    let day_ok = filter.weekdays == 0 || filter.weekdays & (1 << weekday) != 0;
    let hour_ok = filter.hours.is_none_or(|(from, to)| {
        if from < to {
            (from..to).contains(&minute)
        } else {
            minute >= from || minute < to
        }
    });
    day_ok && hour_ok
}

/// Applies points × the tier multiplier, rounded down to a whole point.
pub fn multiplied(points_e4: i64, multiplier_e4: i64) -> i64 {
    (i128::from(points_e4) * i128::from(multiplier_e4) / i128::from(RATE_SCALE * RATE_SCALE)) as i64
}

/// Credits points as a new lot and writes the entry.
#[allow(clippy::too_many_arguments)]
pub fn credit_points(
    member: &mut Member,
    books: &mut Books,
    ctx: &Ctx,
    kind: EntryKind,
    points: i64,
    rule: Option<&Name>,
    available_at: Timestamp,
) -> u32 {
    let expires_at = expiry_of(&ctx.program, ctx.at);
    let lot = member.add_lot(points, ctx.at, available_at, expires_at, ctx.now);
    let slice = super::Slice {
        lot,
        points,
        earned_at: ctx.at,
        expires_at,
    };
    books.post(
        ctx,
        member,
        Wallet::Points,
        kind,
        points,
        rule,
        smallvec::smallvec![slice],
    );
    lot
}

/// Takes available points, earliest expiry first, and writes the (negative) entry naming the
/// lots they came from; returns those lots.
pub fn debit_points(
    member: &mut Member,
    books: &mut Books,
    ctx: &Ctx,
    kind: EntryKind,
    points: i64,
    rule: Option<&Name>,
) -> super::Lots {
    let slices = member.spend(points);
    books.post(
        ctx,
        member,
        Wallet::Points,
        kind,
        -points,
        rule,
        slices.clone(),
    );
    slices
}

/// Awards the `per_event` rules for `name`; returns the points given.
pub fn award_event(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    index: u32,
    name: &str,
) -> i64 {
    let program = ctx.program.clone();
    let month = ctx.at_month();
    let member = &mut merchant.members[index as usize];
    let multiplier_e4 = program.multiplier_e4(member.tier);
    let tier = member.tier;
    let mut total = 0;
    for rule in program
        .event_rules
        .iter()
        .filter(|rule| rule.event.as_deref() == Some(name))
    {
        let limit = if name == ACCOUNT_CREATED {
            Some(1)
        } else {
            rule.limit_per_member
        };
        if limit.is_some_and(|limit| member.event_count(&rule.id) >= limit)
            || !filter_holds(ctx, &rule.filter, tier)
        {
            continue;
        }
        member.count_event(&rule.id);
        let crate::program::Award::PerEvent { points_e4 } = rule.award else {
            unreachable!("event rules award per event")
        };
        let points = multiplied(points_e4, multiplier_e4);
        if points > 0 {
            credit_points(
                member,
                books,
                ctx,
                EntryKind::Bonus,
                points,
                Some(&rule.id),
                ctx.at,
            );
            total += points;
        }
    }
    if total > 0 {
        let delta = Totals {
            points_earned: total,
            ..Totals::default()
        };
        member.counters.add(month, delta, program.tier_months_kept);
        tiers::rise(&program, member, ctx.now_month());
    }
    total
}

/// The birthday bonus of one member for `year`; true if any points were given.
pub fn birthday_bonus(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    index: u32,
    year: i32,
) -> bool {
    let member = &mut merchant.members[index as usize];
    if member.enrolled_at.is_none() || member.last_birthday_year >= year {
        return false;
    }
    member.last_birthday_year = year;
    let mut points = award_event(merchant, books, ctx, index, BIRTHDAY);
    let member = &mut merchant.members[index as usize];
    if let Some(tier) = member
        .tier
        .map(|t| &ctx.program.tiers[t])
        .filter(|t| t.birthday_bonus > 0)
    {
        let bonus = tier.birthday_bonus;
        credit_points(
            member,
            books,
            ctx,
            EntryKind::Bonus,
            bonus,
            Some(&tier.birthday_rule),
            ctx.at,
        );
        // A bonus counts as points earned, towards tiers too.
        let delta = Totals {
            points_earned: bonus,
            ..Totals::default()
        };
        member
            .counters
            .add(ctx.at_month(), delta, ctx.program.tier_months_kept);
        tiers::rise(&ctx.program, member, ctx.now_month());
        points += bonus;
    }
    super::time::register_timer(merchant, index);
    points > 0
}

pub fn event(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    event: &Event,
) -> Result<Applied, Rejection> {
    let name = event.name.trim();
    if name.is_empty() || name.len() > MAX_ALIAS_LEN {
        return reject(
            Reason::Invalid,
            format!("event name must be 1 to {MAX_ALIAS_LEN} characters"),
        );
    }
    if name == BIRTHDAY {
        return reject(
            Reason::Invalid,
            "birthday bonuses are given by the engine on the member's birthday",
        );
    }
    let who = resolve(merchant, &event.member, true)?;
    let tier_before = match who {
        Who::Existing(index) | Who::Activate(index) => merchant.members[index as usize].tier,
        Who::New(_) => None,
    };
    let (index, enrolled, registration_bonus) = materialize(merchant, books, ctx, &who);
    let mut applied = Applied::default();
    // Enrolment gives the registration bonus, once: an `account_created` event adds nothing.
    let earned = if name == ACCOUNT_CREATED {
        0
    } else {
        award_event(merchant, books, ctx, index, name)
    };
    applied.points_earned = registration_bonus + earned;
    finish_member(merchant, ctx, index, enrolled, tier_before, &mut applied);
    Ok(applied)
}

pub fn enroll(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    enroll: &Enroll,
) -> Result<Applied, Rejection> {
    let program = merchant.program().clone();
    let mut aliases = Vec::new();
    if let Some(phone) = &enroll.phone {
        aliases.push(alias_of(&program, &Alias::Phone(phone.clone()))?);
    }
    if let Some(card) = &enroll.card {
        aliases.push(alias_of(&program, &Alias::Card(card.clone()))?);
    }
    let birthday = enroll.birthday.as_deref().map(parse_birthday).transpose()?;
    if enroll.tags.len() > MAX_TAGS
        || enroll
            .tags
            .iter()
            .any(|t| t.trim().is_empty() || t.len() > MAX_ALIAS_LEN)
    {
        return reject(
            Reason::Invalid,
            format!("at most {MAX_TAGS} tags of 1 to {MAX_ALIAS_LEN} characters"),
        );
    }
    // Enrolling with a bulk-issued card that nobody has used yet activates that card's member.
    let issued_card = aliases
        .iter()
        .find_map(|alias| match (alias, merchant.aliases.get(alias)) {
            (Alias::Card(_), Some(&index))
                if merchant.members[index as usize].enrolled_at.is_none() =>
            {
                Some((alias.clone(), index))
            }
            _ => None,
        });
    let is_issued_card =
        |alias: &Alias| issued_card.as_ref().is_some_and(|(card, _)| card == alias);
    if aliases
        .iter()
        .any(|alias| merchant.aliases.contains_key(alias) && !is_issued_card(alias))
    {
        return reject(
            Reason::AliasTaken,
            "that phone or card already belongs to a member",
        );
    }
    let index = match &issued_card {
        Some((card, index)) => {
            for alias in aliases.into_iter().filter(|alias| alias != card) {
                merchant.aliases.insert(alias.clone(), *index);
                merchant.members[*index as usize].aliases.push(alias);
            }
            *index
        }
        None => add_member(merchant, None, aliases),
    };
    let member = &mut merchant.members[index as usize];
    member.tags = enroll.tags.clone();
    member.birthday = birthday;
    if let Some(day) = birthday {
        merchant.birthdays.entry(day).or_default().push(index);
    }
    let mut applied = Applied {
        points_earned: enrol(merchant, books, ctx, index),
        ..Applied::default()
    };
    finish_member(merchant, ctx, index, true, None, &mut applied);
    Ok(applied)
}

fn parse_birthday(text: &str) -> Result<(u32, u32), Rejection> {
    let parsed = text
        .split_once('-')
        .and_then(|(m, d)| Some((m.parse::<u32>().ok()?, d.parse::<u32>().ok()?)))
        .filter(|(m, d)| chrono::NaiveDate::from_ymd_opt(2024, *m, *d).is_some());
    match parsed {
        Some(day) => Ok(day),
        None => reject(
            Reason::Invalid,
            format!("birthday {text:?} is not a month and day \"MM-DD\""),
        ),
    }
}

pub fn link(merchant: &mut Merchant, ctx: &Ctx, link: &Link) -> Result<Applied, Rejection> {
    let (Who::Existing(index) | Who::Activate(index)) = resolve(merchant, &link.member, false)?
    else {
        unreachable!("resolve without enrolment finds or rejects")
    };
    let alias = alias_of(&ctx.program, &link.alias)?;
    match merchant.aliases.get(&alias) {
        Some(&owner) if owner == index => {}
        Some(_) => {
            return reject(
                Reason::AliasTaken,
                "that phone or card already belongs to another member",
            )
        }
        None => {
            merchant.aliases.insert(alias.clone(), index);
            merchant.members[index as usize].aliases.push(alias);
        }
    }
    let tier = merchant.members[index as usize].tier;
    let mut applied = Applied::default();
    finish_member(merchant, ctx, index, false, tier, &mut applied);
    Ok(applied)
}

pub fn issue_cards(
    merchant: &mut Merchant,
    ctx: &Ctx,
    issue: &IssueCards,
) -> Result<Applied, Rejection> {
    let cards = match (&issue.prefix, issue.cards.is_empty()) {
        (Some(prefix), true) => generated_cards(merchant, prefix, issue.count)?,
        (None, false) if issue.count == 0 || issue.count as usize == issue.cards.len() => {
            listed_cards(merchant, ctx, &issue.cards)?
        }
        _ => {
            return reject(
                Reason::Invalid,
                "give either `count` with `prefix`, or the list of `cards`",
            )
        }
    };
    for card in &cards {
        add_member(merchant, None, vec![Alias::Card(card.clone())]);
    }
    Ok(Applied {
        program_version: ctx.program.version,
        cards,
        ..Applied::default()
    })
}

fn generated_cards(
    merchant: &mut Merchant,
    prefix: &str,
    count: u32,
) -> Result<Vec<String>, Rejection> {
    if !(1..=MAX_CARDS_PER_COMMAND).contains(&count) {
        return reject(
            Reason::Invalid,
            format!("`count` must be 1..={MAX_CARDS_PER_COMMAND}"),
        );
    }
    if prefix.len() > 32 || !prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return reject(
            Reason::Invalid,
            "`prefix` must be at most 32 letters or digits",
        );
    }
    let mut cards = Vec::with_capacity(count as usize);
    while cards.len() < count as usize {
        let card = format!("{prefix}{:010}", merchant.next_card);
        merchant.next_card += 1;
        if !merchant.aliases.contains_key(&Alias::Card(card.clone())) {
            cards.push(card);
        }
    }
    Ok(cards)
}

fn listed_cards(
    merchant: &Merchant,
    ctx: &Ctx,
    listed: &[String],
) -> Result<Vec<String>, Rejection> {
    if listed.len() > MAX_CARDS_PER_COMMAND as usize {
        return reject(
            Reason::Invalid,
            format!("at most {MAX_CARDS_PER_COMMAND} cards per command"),
        );
    }
    let mut cards = Vec::with_capacity(listed.len());
    // A list repeats a card: found in one pass (a scan of the list per card was quadratic in
    // a 100,000-card command).
    let mut seen = rustc_hash::FxHashSet::default();
    seen.reserve(listed.len());
    for card in listed {
        let Alias::Card(card) = alias_of(&ctx.program, &Alias::Card(card.clone()))? else {
            unreachable!()
        };
        if merchant.aliases.contains_key(&Alias::Card(card.clone())) || !seen.insert(card.clone()) {
            return reject(Reason::AliasTaken, format!("card {card} already exists"));
        }
        cards.push(card);
    }
    Ok(cards)
}

pub fn adjust(
    merchant: &mut Merchant,
    books: &mut Books,
    ctx: &Ctx,
    adjust: &Adjust,
) -> Result<Applied, Rejection> {
    let (Who::Existing(index) | Who::Activate(index)) = resolve(merchant, &adjust.member, false)?
    else {
        unreachable!("resolve without enrolment finds or rejects")
    };
    let credit =
        to_minor(adjust.credit, ctx.program.minor_units).or_else(|m| reject(Reason::Invalid, m))?;
    if adjust.points.abs() >= ORDER_MINOR_MAX || credit.abs() >= ORDER_MINOR_MAX {
        return reject(Reason::Invalid, "that adjustment is impossibly large");
    }
    if adjust.points == 0 && credit == 0 {
        return reject(
            Reason::Invalid,
            "an adjustment changes `points` or `credit`",
        );
    }
    let member = &mut merchant.members[index as usize];
    if adjust.points < 0 && -adjust.points > member.available_points() {
        return reject(
            Reason::InsufficientPoints,
            format!(
                "the member has {} points available",
                member.available_points()
            ),
        );
    }
    if credit < 0 && -credit > member.credit_minor {
        return reject(
            Reason::InsufficientCredit,
            "the member does not have that much store credit",
        );
    }
    let tier = member.tier;
    if adjust.points > 0 {
        credit_points(
            member,
            books,
            ctx,
            EntryKind::Adjustment,
            adjust.points,
            None,
            ctx.at,
        );
    } else if adjust.points < 0 {
        debit_points(
            member,
            books,
            ctx,
            EntryKind::Adjustment,
            -adjust.points,
            None,
        );
    }
    member.credit_minor += credit;
    books.post(
        ctx,
        member,
        Wallet::Credit,
        EntryKind::Adjustment,
        credit,
        None,
        Vec::new(),
    );
    let mut applied = Applied::default();
    finish_member(merchant, ctx, index, false, tier, &mut applied);
    Ok(applied)
}

/// Compiles a program sent in a command for `merchant`, refusing a version that is not newer.
pub fn compile_for(merchant: &str, text: &str, current: Option<u32>) -> Result<Program, Rejection> {
    let program = parse_and_compile(text)
        .or_else(|errors| reject(Reason::Invalid, format!("program: {errors}")))?;
    if program.merchant != merchant {
        return reject(
            Reason::Invalid,
            format!("the program is for merchant {:?}", program.merchant),
        );
    }
    if let Some(current) = current.filter(|current| program.version <= *current) {
        return reject(
            Reason::Invalid,
            format!("program version must be above the current {current}"),
        );
    }
    Ok(program)
}

pub fn load_program(merchant: &mut Merchant, ctx: &Ctx, text: &str) -> Result<Applied, Rejection> {
    let program = compile_for(&merchant.name, text, Some(ctx.program.version))?;
    let version = program.version;
    switch_program(merchant, Arc::new(program));
    Ok(Applied {
        program_version: version,
        ..Applied::default()
    })
}

/// Makes `program` current: members keep their tier by id (a tier that is gone is
/// re-qualified), and calendar boundaries follow the new zone.
pub fn switch_program(merchant: &mut Merchant, program: Arc<Program>) {
    let old = merchant.program().clone();
    let month = month_index(&program, merchant.clock);
    for member in &mut merchant.members {
        let tier_id = member.tier.map(|t| &*old.tiers[t].id);
        member.tier = tier_id
            .and_then(|id| program.tier_index(id))
            .filter(|&t| program.tiers[t].active);
        // A tier that is gone or deactivated is skipped: the member re-qualifies.
        if tier_id.is_some() && member.tier.is_none() {
            member.tier = tiers::qualifying(&program, &member.counters, month);
        }
    }
    merchant.programs.push(program);
    schedule_boundaries(merchant);
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use hashbrown::Equivalent;
    use rustc_hash::FxBuildHasher;
    use tally_protocol::Alias;

    use super::AliasText;

    #[test]
    fn hashes_as_an_alias_does() {
        for text in ["+15550102030", "CARD-7", ""] {
            for (borrowed, owned) in [
                (AliasText::Phone(text), Alias::Phone(text.to_string())),
                (AliasText::Card(text), Alias::Card(text.to_string())),
            ] {
                assert_eq!(
                    FxBuildHasher.hash_one(&borrowed),
                    FxBuildHasher.hash_one(&owned),
                    "{owned:?}"
                );
                assert!(borrowed.equivalent(&owned));
                assert_eq!(borrowed.to_alias(), owned);
            }
        }
        assert!(!AliasText::Phone("7").equivalent(&Alias::Card("7".into())));
        assert!(!AliasText::Card("7").equivalent(&Alias::Card("8".into())));
    }
}
