//! Promotions in the order pipeline, and their state: per-member uses, punch-card progress,
//! budgets, assignments and scratch codes.
//!
//! An order meets promotions in two steps of its plan. After catalog rewards, `plan_discounts`
//! finds the promotions the order can trigger (codes presented, assignments of the member or
//! its tier, automatic promotions indexed by the order's SKUs and categories), picks each
//! one's first case whose conditions hold and takes its discounts off the lines, so points
//! are earned on what is paid. After the earning rules, `plan_points` adds award and
//! multiplier points. Nothing changes until `commit`; `quote` shows the same plan.
//! A return re-checks what the remaining order still meets (`plan_return`, `commit_return`).

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tally_protocol::{
    Applied, AssignPromotion, IssueCodes, MemberRef, Name, PromotionApplied, PromotionLine,
    PromotionNotApplied, PunchCard, Purchase, Reason, Tag,
};

use super::members::{resolve, Who};
use super::purchase::{allocate, PlanLine};
use super::{finish_member, reject, Ctx, Merchant, Rejection};
use crate::money::{from_minor, RATE_SCALE};
use crate::program::promotions::{
    normalize_code, Action, Budget, Case, Conditions, LineChoice, Target, MAX_CODE_LEN,
};
use crate::program::{Program, Promotion, PromotionKind};

/// Bounds on one command and on a merchant's promotion state.
pub const MAX_CODES_PER_ORDER: usize = 10;
pub const MAX_CODES_PER_COMMAND: u32 = 100_000;
pub const MAX_CODES_PER_MERCHANT: usize = 1_000_000;
pub const MAX_MEMBERS_PER_ASSIGNMENT: usize = 10_000;
pub const MAX_ASSIGNMENTS_PER_MEMBER: usize = 256;
pub const MAX_TIER_ASSIGNMENTS: usize = 1_024;
const MAX_TAGS: usize = 32;
const MAX_TAG_LEN: usize = 64;
/// A scratch code is 16 characters of Crockford base 32: 80 random bits.
const SCRATCH_CODE_CHARS: usize = 16;
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// A merchant's promotion state. Keyed by promotion id, so it outlives program versions.
/// Plain data (serde), so a checkpoint of the merchant can hold it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct State {
    spent: FxHashMap<Name, Spent>,
    members: FxHashMap<u32, MemberState>,
    /// Issued scratch codes, normalised.
    scratch: FxHashMap<Box<str>, ScratchCode>,
    /// (tier id, promotion id): members holding the tier may use the promotion.
    tier_assignments: Vec<(Name, Name)>,
}

/// What a promotion has given in all: what its budget is measured against.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct Spent {
    pub uses: u64,
    pub points: i64,
    pub amount_minor: i64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct MemberState {
    uses: Vec<(Name, u32)>,
    /// Holes on the current card of each punch card.
    punches: Vec<(Name, u32)>,
    assigned: Vec<Name>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct ScratchCode {
    promotion: Name,
    used: bool,
}

fn count_of(list: &[(Name, u32)], id: &str) -> u32 {
    list.iter().find(|(p, _)| &**p == id).map_or(0, |(_, n)| *n)
}

fn count_mut<'a>(list: &'a mut Vec<(Name, u32)>, id: &Name) -> &'a mut u32 {
    let at = match list.iter().position(|(p, _)| p == id) {
        Some(at) => at,
        None => {
            list.push((id.clone(), 0));
            list.len() - 1
        }
    };
    &mut list[at].1
}

impl State {
    fn member(&self, index: Option<u32>) -> Option<&MemberState> {
        index.and_then(|i| self.members.get(&i))
    }

    fn uses(&self, member: Option<u32>, id: &str) -> u32 {
        self.member(member).map_or(0, |m| count_of(&m.uses, id))
    }

    fn punches(&self, member: Option<u32>, id: &str) -> u32 {
        self.member(member).map_or(0, |m| count_of(&m.punches, id))
    }

    pub fn spent(&self, id: &str) -> Spent {
        self.spent.get(id).copied().unwrap_or_default()
    }

    /// Hashes the state in a fixed order, for the ledger's digest.
    pub fn digest_into(&self, hasher: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        let mut spent: Vec<_> = self.spent.iter().collect();
        spent.sort();
        spent.hash(hasher);
        let mut members: Vec<_> = self.members.iter().collect();
        members.sort_by_key(|(index, _)| **index);
        members.hash(hasher);
        let mut scratch: Vec<_> = self.scratch.iter().collect();
        scratch.sort_by(|a, b| a.0.cmp(b.0));
        scratch.hash(hasher);
        self.tier_assignments.hash(hasher);
    }
}

/// Budgets are never overspent: checked when planning, asserted when committing.
fn within_budget(budget: Option<Budget>, spent: Spent) -> bool {
    match budget {
        None => true,
        Some(Budget::Uses(uses)) => spent.uses <= uses,
        Some(Budget::Points(points)) => spent.points <= points,
        Some(Budget::AmountMinor(amount)) => spent.amount_minor <= amount,
    }
}

// ---------------------------------------------------------------------------------------------
// Planning an order
// ---------------------------------------------------------------------------------------------

/// What promotions do to one order, decided before anything changes.
#[derive(Debug, Default)]
pub struct OrderPromotions {
    applied: Vec<Application>,
    skipped: Vec<PromotionNotApplied>,
    /// Punch cards considered but not punched: their progress is shown unchanged.
    cards_seen: Vec<PunchCard>,
}

#[derive(Debug)]
struct Application {
    promotion: u32,
    case: Option<u32>,
    code: Option<String>,
    scratch: bool,
    /// (line index, money off) and (line index, units made free)
    lines: Vec<(u32, i64)>,
    free_units: Vec<(u32, i64)>,
    shipping_minor: i64,
    points: i64,
    factors_e4: Vec<i64>,
    gifts: Vec<Name>,
    punch: Option<Punch>,
    /// What a return re-checks: the case's minimum total and its `contains` conditions as
    /// (lines that matched, units needed).
    min_total_minor: Option<i64>,
    contains: Vec<(Vec<u32>, i64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Punch {
    after: u32,
    of: u32,
    completed: bool,
}

impl OrderPromotions {
    /// Money all promotions took off the order (lines and shipping).
    pub fn discount_minor(&self) -> i64 {
        self.applied.iter().map(Application::discount_minor).sum()
    }
}

impl Application {
    fn discount_minor(&self) -> i64 {
        self.lines.iter().map(|(_, a)| a).sum::<i64>() + self.shipping_minor
    }
}

/// The facts about an order its conditions read.
pub(super) struct OrderFacts<'a> {
    pub order: &'a Purchase,
    pub channel: &'a str,
    pub total_minor: i64,
    pub who: &'a Who,
    /// The member's tier at the start of the order.
    pub tier: Option<usize>,
}

struct Facts<'a> {
    order: &'a OrderFacts<'a>,
    member: Option<u32>,
    orders_before: i64,
    tags: &'a [String],
    ctx: &'a Ctx<'a>,
}

impl Facts<'_> {
    fn weekday_minute(&self) -> (u32, u32) {
        self.ctx.at_weekday_minute()
    }
}

/// A promotion the order may meet, and the code that brought it, if any.
struct Candidate {
    promotion: u32,
    code: Option<String>,
    scratch: bool,
}

/// Decides the promotions of an order and takes their discounts off the lines.
pub(super) fn plan_discounts(
    merchant: &Merchant,
    ctx: &Ctx,
    facts: &OrderFacts,
    lines: &mut [PlanLine],
    shipping_minor: &mut i64,
) -> Result<OrderPromotions, Rejection> {
    let program = &*ctx.program;
    let mut result = OrderPromotions::default();
    let member = match facts.who {
        Who::Existing(index) | Who::Activate(index) => Some(*index),
        Who::New(_) => None,
    };
    let candidates = candidates(merchant, program, facts, member, lines, &mut result)?;
    if candidates.is_empty() {
        return Ok(result);
    }
    let member_data = member.map(|i| &merchant.members[i as usize]);
    let f = Facts {
        order: facts,
        member,
        orders_before: member_data.map_or(0, |m| m.counters.lifetime.orders),
        tags: member_data.map_or(&[], |m| m.tags.as_slice()),
        ctx,
    };
    for candidate in candidates {
        let promotion = &program.promotions.list[candidate.promotion as usize];
        match consider(
            &merchant.promotions,
            &f,
            promotion,
            &candidate,
            lines,
            *shipping_minor,
        ) {
            Ok(mut application) => {
                apply_effect(lines, shipping_minor, &application);
                application.promotion = candidate.promotion;
                result.applied.push(application);
            }
            Err(None) => {}
            Err(Some((reason, condition))) => {
                if promotion.kind == PromotionKind::PunchCard && member.is_some() {
                    result.cards_seen.push(PunchCard {
                        promotion: promotion.id.clone(),
                        punches: merchant.promotions.punches(member, &promotion.id),
                        of: promotion.punches,
                        completed: false,
                    });
                }
                result.skipped.push(PromotionNotApplied {
                    promotion: promotion.id.clone(),
                    reason,
                    condition: condition.map(Name::from),
                    code: candidate.code,
                });
            }
        }
    }
    Ok(result)
}

/// The promotions this order can trigger, in program order, each once.
fn candidates(
    merchant: &Merchant,
    program: &Program,
    facts: &OrderFacts,
    member: Option<u32>,
    lines: &[PlanLine],
    result: &mut OrderPromotions,
) -> Result<Vec<Candidate>, Rejection> {
    let promotions = &program.promotions;
    // Room for what an order usually finds: the program's automatic promotions and a few
    // per line, without growing the vector two or three times an order.
    let expected = promotions.automatic_always.len() + 2 * lines.len();
    let mut found: Vec<Candidate> = Vec::with_capacity(expected.clamp(4, 64));
    codes(merchant, program, facts.order, &mut found, result)?;
    if let Some(state) = merchant.promotions.member(member) {
        for id in &state.assigned {
            if let Some(&index) = promotions.by_id.get(id) {
                found.push(plain(index));
            }
        }
    }
    if let Some(tier) = facts.tier.map(|t| &program.tiers[t].id) {
        for (_, id) in merchant
            .promotions
            .tier_assignments
            .iter()
            .filter(|(t, _)| t == tier)
        {
            if let Some(&index) = promotions.by_id.get(id) {
                found.push(plain(index));
            }
        }
    }
    found.extend(promotions.automatic_always.iter().map(|&i| plain(i)));
    for (line, sent) in lines.iter().zip(&facts.order.lines) {
        if let Some(list) = promotions.automatic_by_sku.get(&**line.sku) {
            found.extend(list.iter().map(|&i| plain(i)));
        }
        if let Some(list) = sent
            .category
            .as_deref()
            .and_then(|c| promotions.automatic_by_category.get(c))
        {
            found.extend(list.iter().map(|&i| plain(i)));
        }
    }
    // Program order decides which discount comes first; a promotion applies once per order.
    found.sort_by_key(|c| (c.promotion, c.code.is_none()));
    found.dedup_by_key(|c| c.promotion);
    Ok(found)
}

fn plain(promotion: u32) -> Candidate {
    Candidate {
        promotion,
        code: None,
        scratch: false,
    }
}

/// Looks up the codes presented: a `code` promotion's code or an issued scratch code. A code
/// that names nothing rejects the order (the cashier fixes the typo); a second code for the
/// same promotion is not applied.
fn codes(
    merchant: &Merchant,
    program: &Program,
    order: &Purchase,
    found: &mut Vec<Candidate>,
    result: &mut OrderPromotions,
) -> Result<(), Rejection> {
    if order.codes.len() > MAX_CODES_PER_ORDER {
        return reject(
            Reason::Invalid,
            format!("at most {MAX_CODES_PER_ORDER} codes per order"),
        );
    }
    for (i, presented) in order.codes.iter().enumerate() {
        let code = normalize_code(presented);
        if code.is_empty() || code.len() > MAX_CODE_LEN {
            return reject(
                Reason::Invalid,
                format!("code {}: 1 to {MAX_CODE_LEN} letters or digits", i + 1),
            );
        }
        if order.codes[..i].iter().any(|c| normalize_code(c) == code) {
            return reject(
                Reason::Invalid,
                format!("code {presented:?} is presented twice"),
            );
        }
        let (index, scratch) = match program.promotions.by_code.get(&code) {
            Some(&index) => (index, false),
            None => match merchant.promotions.scratch.get(code.as_str()) {
                Some(issued) => match program.promotions.by_id.get(&issued.promotion) {
                    Some(&index) if !issued.used => (index, true),
                    Some(_) => {
                        result.skipped.push(not_applied(
                            &issued.promotion,
                            Reason::CodeAlreadyUsed,
                            Some(code),
                        ));
                        continue;
                    }
                    // The program no longer has the promotion the code was issued for.
                    None => {
                        result.skipped.push(not_applied(
                            &issued.promotion,
                            Reason::PromotionExpired,
                            Some(code),
                        ));
                        continue;
                    }
                },
                None => {
                    return reject(
                        Reason::CodeUnknown,
                        format!("promotion code {presented:?} is not valid"),
                    )
                }
            },
        };
        if found.iter().any(|c| c.promotion == index) {
            let id = &program.promotions.list[index as usize].id;
            result
                .skipped
                .push(not_applied(id, Reason::PromotionLimitReached, Some(code)));
            continue;
        }
        found.push(Candidate {
            promotion: index,
            code: Some(code),
            scratch,
        });
    }
    Ok(())
}

fn not_applied(id: &Name, reason: Reason, code: Option<String>) -> PromotionNotApplied {
    PromotionNotApplied {
        promotion: id.clone(),
        reason,
        condition: None,
        code,
    }
}

/// Why a promotion was not applied: `None` means "not considered" (nothing to report).
type Skip = Option<(Reason, Option<&'static str>)>;

/// Checks a promotion against the order and computes what it would do.
fn consider(
    state: &State,
    f: &Facts,
    promotion: &Promotion,
    candidate: &Candidate,
    lines: &[PlanLine],
    shipping_minor: i64,
) -> Result<Application, Skip> {
    // An automatic promotion that is not running, or whose own filters leave the order out,
    // is not considered at all: listing it on every order would only be noise.
    let report = |skip: (Reason, Option<&'static str>)| {
        if promotion.kind.automatic() {
            None
        } else {
            Some(skip)
        }
    };
    if !promotion.running_at(f.ctx.at) {
        return Err(report((Reason::PromotionExpired, None)));
    }
    if let Some(condition) = promotion_filter(f, promotion) {
        return Err(report((Reason::ConditionNotMet, Some(condition))));
    }
    let uses = state.uses(f.member, &promotion.id);
    if promotion
        .limit_per_member
        .is_some_and(|limit| uses >= limit)
    {
        let reason = match promotion.kind {
            PromotionKind::Code => Reason::CodeAlreadyUsed,
            _ => Reason::PromotionLimitReached,
        };
        return Err(Some((reason, None)));
    }
    let spent = state.spent(&promotion.id);
    if !within_budget(
        promotion.budget,
        Spent {
            uses: spent.uses + 1,
            ..spent
        },
    ) || matches!(promotion.budget, Some(Budget::Points(p)) if spent.points >= p)
        || matches!(promotion.budget, Some(Budget::AmountMinor(a)) if spent.amount_minor >= a)
    {
        return Err(Some((Reason::BudgetExhausted, None)));
    }
    let mut failed = None;
    let Some((case_index, case)) = promotion.cases.iter().enumerate().find(|(k, case)| {
        let first_failure = failed_condition(f, case, lines, shipping_minor);
        if *k == 0 {
            failed = first_failure;
        }
        first_failure.is_none()
    }) else {
        return Err(Some((Reason::ConditionNotMet, failed)));
    };
    let mut application = effect_of(f, case, lines, shipping_minor, promotion, state);
    application.case = Some(case_index as u32);
    application.code = candidate.code.clone();
    application.scratch = candidate.scratch;
    let after = Spent {
        uses: spent.uses + 1,
        points: spent.points + application.points,
        amount_minor: spent.amount_minor + application.discount_minor(),
    };
    if !within_budget(promotion.budget, after) {
        return Err(Some((Reason::BudgetExhausted, None)));
    }
    Ok(application)
}

/// The promotion's own filters: channels, stores, tiers.
fn promotion_filter(f: &Facts, promotion: &Promotion) -> Option<&'static str> {
    if !promotion.channels.is_empty() && !promotion.channels.iter().any(|c| c == f.order.channel) {
        return Some("channel");
    }
    let store = f.order.order.store.as_deref();
    if !promotion.stores.is_empty()
        && !store.is_some_and(|s| promotion.stores.iter().any(|p| p == s))
    {
        return Some("store");
    }
    let tier = f.order.tier.map(|t| &f.ctx.program.tiers[t].id);
    if !promotion.tiers.is_empty() && !tier.is_some_and(|t| promotion.tiers.contains(t)) {
        return Some("tier");
    }
    None
}

/// The first condition of a case the order does not meet, by its name.
fn failed_condition(
    f: &Facts,
    case: &Case,
    lines: &[PlanLine],
    shipping_minor: i64,
) -> Option<&'static str> {
    let c: &Conditions = &case.conditions;
    let order = f.order;
    if c.min_total_minor.is_some_and(|min| order.total_minor < min) {
        return Some("min_total");
    }
    if c.contains
        .iter()
        .any(|need| units(f, &need.target) < need.qty)
    {
        return Some("contains");
    }
    if !c.channels.is_empty() && !c.channels.iter().any(|ch| ch == order.channel) {
        return Some("channel");
    }
    let store = order.order.store.as_deref();
    if !c.stores.is_empty() && !store.is_some_and(|s| c.stores.iter().any(|w| w == s)) {
        return Some("store");
    }
    if c.min_tier
        .is_some_and(|min| order.tier.is_none_or(|t| t < min))
    {
        return Some("min_tier");
    }
    if c.weekdays != 0 && c.weekdays & (1 << f.weekday_minute().0) == 0 {
        return Some("weekday");
    }
    if let Some((from, to)) = c.hours {
        let minute = f.weekday_minute().1;
        let inside = if from < to {
            (from..to).contains(&minute)
        } else {
            minute >= from || minute < to
        };
        if !inside {
            return Some("hours");
        }
    }
    if c.nth_order
        .is_some_and(|n| i64::from(n) != f.orders_before + 1)
    {
        return Some("nth_order");
    }
    if c.member_tag
        .as_ref()
        .is_some_and(|tag| !f.tags.iter().any(|t| t == tag))
    {
        return Some("member_tag");
    }
    for action in &case.actions {
        match action {
            Action::FreeProduct { sku, .. } if free_unit_line(lines, sku).is_none() => {
                return Some("free_product");
            }
            Action::FreeShipping if shipping_minor == 0 => return Some("shipping"),
            _ => {}
        }
    }
    None
}

fn units(f: &Facts, target: &Target) -> i64 {
    f.order
        .order
        .lines
        .iter()
        .filter(|l| target.matches(&l.sku, l.category.as_deref()))
        .map(|l| l.qty)
        .sum()
}

fn free_unit_line(lines: &[PlanLine], sku: &str) -> Option<usize> {
    lines
        .iter()
        .position(|l| **l.sku == *sku && l.free_units < l.qty && l.net_minor > 0)
}

/// What a case's actions (and a card's reward, when this punch fills it) do to the order.
fn effect_of(
    f: &Facts,
    case: &Case,
    lines: &[PlanLine],
    shipping_minor: i64,
    promotion: &Promotion,
    state: &State,
) -> Application {
    let mut work = Work {
        net: lines.iter().map(|l| l.net_minor).collect(),
        free: lines.iter().map(|l| l.free_units).collect(),
        shipping_minor,
        app: Application {
            promotion: 0,
            case: None,
            code: None,
            scratch: false,
            lines: Vec::new(),
            free_units: Vec::new(),
            shipping_minor: 0,
            points: 0,
            factors_e4: Vec::new(),
            gifts: Vec::new(),
            punch: None,
            min_total_minor: case.conditions.min_total_minor,
            contains: contains_lines(f, &case.conditions),
        },
    };
    for action in &case.actions {
        work.act(f, lines, action);
    }
    if case.actions.contains(&Action::Punch) {
        let before = state.punches(f.member, &promotion.id);
        let completed = before + 1 >= promotion.punches;
        if completed {
            for action in &promotion.reward {
                work.act(f, lines, action);
            }
        }
        work.app.punch = Some(Punch {
            after: if completed { 0 } else { before + 1 },
            of: promotion.punches,
            completed,
        });
    }
    let mut app = work.app;
    app.lines = lines
        .iter()
        .zip(&work.net)
        .enumerate()
        .filter(|(_, (line, net))| line.net_minor != **net)
        .map(|(l, (line, net))| (l as u32, line.net_minor - net))
        .collect();
    app.free_units = lines
        .iter()
        .zip(&work.free)
        .enumerate()
        .filter(|(_, (line, free))| line.free_units != **free)
        .map(|(l, (line, free))| (l as u32, free - line.free_units))
        .collect();
    app.shipping_minor = shipping_minor - work.shipping_minor;
    app
}

fn contains_lines(f: &Facts, conditions: &Conditions) -> Vec<(Vec<u32>, i64)> {
    conditions
        .contains
        .iter()
        .map(|need| {
            let lines = f
                .order
                .order
                .lines
                .iter()
                .enumerate()
                .filter(|(_, l)| need.target.matches(&l.sku, l.category.as_deref()))
                .map(|(i, _)| i as u32)
                .collect();
            (lines, need.qty)
        })
        .collect()
}

/// Line amounts while a promotion's actions are worked out, before they are kept.
struct Work {
    net: Vec<i64>,
    free: Vec<i64>,
    shipping_minor: i64,
    app: Application,
}

impl Work {
    fn act(&mut self, f: &Facts, lines: &[PlanLine], action: &Action) {
        match action {
            Action::AwardPoints { points } => self.app.points += points,
            Action::MultiplyPoints { factor_e4 } => self.app.factors_e4.push(*factor_e4),
            Action::PercentDiscount {
                percent_e4,
                lines: choice,
            } => {
                let base = self.chosen_base(f, choice);
                let amount =
                    i128::from(base) * i128::from(*percent_e4) / i128::from(100 * RATE_SCALE);
                self.spread(f, choice, amount as i64);
            }
            Action::FixedDiscount {
                amount_minor,
                lines: choice,
            } => {
                let amount = (*amount_minor).min(self.chosen_base(f, choice));
                self.spread(f, choice, amount);
            }
            Action::FreeProduct { sku, qty } => {
                for _ in 0..*qty {
                    let Some(l) = (0..lines.len()).find(|&l| {
                        **lines[l].sku == **sku && self.free[l] < lines[l].qty && self.net[l] > 0
                    }) else {
                        break;
                    };
                    self.net[l] -= lines[l].unit_minor.min(self.net[l]);
                    self.free[l] += 1;
                }
            }
            Action::FreeShipping => self.shipping_minor = 0,
            Action::ExternalGift { gift } => self.app.gifts.push(gift.clone()),
            Action::Punch => {}
        }
    }

    fn chosen(&self, f: &Facts, choice: &LineChoice, l: usize) -> bool {
        let line = &f.order.order.lines[l];
        self.net[l] > 0 && choice.chooses(&line.sku, line.category.as_deref())
    }

    fn chosen_base(&self, f: &Facts, choice: &LineChoice) -> i64 {
        (0..self.net.len())
            .filter(|&l| self.chosen(f, choice, l))
            .map(|l| self.net[l])
            .sum()
    }

    /// Shares a discount over the chosen lines in proportion to their amounts: no line goes
    /// below zero, because the discount is at most their sum.
    fn spread(&mut self, f: &Facts, choice: &LineChoice, amount: i64) {
        let base = self.chosen_base(f, choice);
        if amount <= 0 || base == 0 {
            return;
        }
        debug_assert!(amount <= base);
        let numerators: Vec<i128> = (0..self.net.len())
            .map(|l| {
                if self.chosen(f, choice, l) {
                    i128::from(self.net[l]) * i128::from(amount)
                } else {
                    0
                }
            })
            .collect();
        let (total, shares) = allocate(&numerators, i128::from(base));
        debug_assert_eq!(total, amount);
        for (net, share) in self.net.iter_mut().zip(shares) {
            *net -= share;
            assert!(*net >= 0, "a discount took a line below zero");
        }
    }
}

/// Takes an applied promotion's discounts off the order's lines and shipping.
fn apply_effect(lines: &mut [PlanLine], shipping_minor: &mut i64, application: &Application) {
    for &(l, amount) in &application.lines {
        let line = &mut lines[l as usize];
        assert!(amount <= line.net_minor, "a discount larger than its line");
        line.net_minor -= amount;
    }
    // Units made free earn nothing, as with a catalog reward.
    for &(l, units) in &application.free_units {
        lines[l as usize].free_units += units;
    }
    *shipping_minor -= application.shipping_minor;
    assert!(*shipping_minor >= 0);
}

/// After the earning rules: multiplier points on the order's rule points, capped by what is
/// left of a points budget; then every promotion's points join the order's rules.
pub(super) fn plan_points(
    state: &State,
    program: &Program,
    promotions: &mut OrderPromotions,
    rule_points: i64,
) -> Vec<(Name, i64)> {
    let mut points = Vec::new();
    for app in &mut promotions.applied {
        let promotion = &program.promotions.list[app.promotion as usize];
        let extra: i64 = app
            .factors_e4
            .iter()
            .map(|f| {
                (i128::from(rule_points) * i128::from(f - RATE_SCALE) / i128::from(RATE_SCALE))
                    as i64
            })
            .sum();
        let left = match promotion.budget {
            Some(Budget::Points(budget)) => budget - state.spent(&promotion.id).points - app.points,
            _ => i64::MAX,
        };
        app.points += extra.min(left).max(0);
        if app.points > 0 {
            points.push((promotion.rule.clone(), app.points));
        }
    }
    points
}

/// Fills the result's promotion lists.
pub(super) fn describe(
    program: &Program,
    promotions: &OrderPromotions,
    skus: &[&Name],
    applied: &mut Applied,
) {
    let minor = program.minor_units;
    for app in &promotions.applied {
        let promotion = &program.promotions.list[app.promotion as usize];
        applied.promotions.push(PromotionApplied {
            promotion: promotion.id.clone(),
            case: app.case,
            code: app.code.clone(),
            lines: app
                .lines
                .iter()
                .map(|&(l, amount)| PromotionLine {
                    line: l + 1,
                    sku: skus[l as usize].clone(),
                    amount: from_minor(amount, minor),
                })
                .collect(),
            shipping: from_minor(app.shipping_minor, minor),
            discount: from_minor(app.discount_minor(), minor),
            points: app.points,
            gifts: app.gifts.clone(),
            punch: i64::from(app.punch.is_some()),
            code_returned: false,
        });
        if let Some(punch) = app.punch {
            applied.punch_cards.push(PunchCard {
                promotion: promotion.id.clone(),
                punches: punch.after,
                of: punch.of,
                completed: punch.completed,
            });
        }
    }
    applied
        .punch_cards
        .extend(promotions.cards_seen.iter().cloned());
    applied.promotions_not_applied = promotions.skipped.clone();
}

// ---------------------------------------------------------------------------------------------
// Committing an order
// ---------------------------------------------------------------------------------------------

/// What a return needs to know about a promotion an order got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromotionRecord {
    #[serde(
        serialize_with = "super::intern::number",
        deserialize_with = "super::intern::numbered"
    )]
    id: Name,
    #[serde(
        serialize_with = "super::intern::number",
        deserialize_with = "super::intern::numbered"
    )]
    rule: Name,
    points: i64,
    amount_minor: i64,
    gifts: Vec<Name>,
    punch: Option<Punch>,
    code: Option<String>,
    scratch: bool,
    min_total_minor: Option<i64>,
    contains: Vec<(Vec<u32>, i64)>,
    /// Points, gifts and punch taken back by a return.
    taken_back: bool,
    /// Use, code and budget given back by the return of the whole order.
    released: bool,
}

/// Writes the order's promotions into the state: uses, punches, codes, budgets.
pub(super) fn commit(
    state: &mut State,
    program: &Program,
    member: u32,
    promotions: OrderPromotions,
) -> Vec<PromotionRecord> {
    let mut records = Vec::with_capacity(promotions.applied.len());
    for app in promotions.applied {
        let promotion = &program.promotions.list[app.promotion as usize];
        let id = &promotion.id;
        let spent = state.spent.entry(id.clone()).or_default();
        spent.uses += 1;
        spent.points += app.points;
        spent.amount_minor += app.discount_minor();
        assert!(
            within_budget(promotion.budget, *spent),
            "promotion {id}: budget overspent"
        );
        let member_state = state.members.entry(member).or_default();
        *count_mut(&mut member_state.uses, id) += 1;
        if let Some(punch) = app.punch {
            *count_mut(&mut member_state.punches, id) = punch.after;
        }
        if app.scratch {
            let code = app
                .code
                .as_deref()
                .expect("a scratch promotion has its code");
            let issued = state.scratch.get_mut(code).expect("an issued code");
            assert!(!issued.used, "scratch code used twice");
            issued.used = true;
        }
        records.push(PromotionRecord {
            id: id.clone(),
            rule: promotion.rule.clone(),
            points: app.points,
            amount_minor: app.discount_minor(),
            gifts: app.gifts,
            punch: app.punch,
            code: app.code,
            scratch: app.scratch,
            min_total_minor: app.min_total_minor,
            contains: app.contains,
            taken_back: false,
            released: false,
        });
    }
    records
}

// ---------------------------------------------------------------------------------------------
// Returns
// ---------------------------------------------------------------------------------------------

/// One promotion a return takes something back from.
#[derive(Debug, Clone)]
pub struct TakeBack {
    record: usize,
    /// The remaining order no longer meets the case: points, gifts and punch go.
    take: bool,
    /// The whole order is back: the use, the code and the budget are given back.
    release: bool,
}

/// Which promotions a return takes back, and the points it takes (rule, points).
pub(super) fn plan_return(
    records: &[PromotionRecord],
    remaining_units: &[i64],
    remaining_total_minor: i64,
    whole: bool,
) -> (Vec<TakeBack>, Vec<(Name, i64)>) {
    let mut takes = Vec::new();
    let mut points = Vec::new();
    for (i, record) in records.iter().enumerate().filter(|(_, r)| !r.released) {
        let below = record
            .min_total_minor
            .is_some_and(|min| remaining_total_minor < min);
        let missing = record.contains.iter().any(|(lines, qty)| {
            lines
                .iter()
                .map(|&l| remaining_units[l as usize])
                .sum::<i64>()
                < *qty
        });
        let take = !record.taken_back && (whole || below || missing);
        if take || whole {
            takes.push(TakeBack {
                record: i,
                take,
                release: whole,
            });
        }
        if take && record.points > 0 {
            points.push((record.rule.clone(), record.points));
        }
    }
    (takes, points)
}

/// Undoes what the return takes back and describes it in the result.
pub(super) fn commit_return(
    state: &mut State,
    member: u32,
    records: &mut [PromotionRecord],
    takes: &[TakeBack],
    applied: &mut Applied,
) {
    for take in takes {
        let record = &mut records[take.record];
        let member_state = state.members.entry(member).or_default();
        let mut view = PromotionApplied {
            promotion: record.id.clone(),
            ..PromotionApplied::default()
        };
        if take.take {
            record.taken_back = true;
            view.points = -record.points;
            view.gifts = record.gifts.clone();
            if let Some(punch) = record.punch {
                let holes = count_mut(&mut member_state.punches, &record.id);
                *holes = if punch.completed {
                    // The card this punch filled is given back its other holes.
                    (*holes + punch.of - 1).min(punch.of - 1)
                } else {
                    holes.saturating_sub(1)
                };
                view.punch = -1;
                applied.punch_cards.push(PunchCard {
                    promotion: record.id.clone(),
                    punches: *holes,
                    of: punch.of,
                    completed: false,
                });
            }
        }
        if take.release {
            record.released = true;
            let uses = count_mut(&mut member_state.uses, &record.id);
            *uses = uses.saturating_sub(1);
            let spent = state.spent.entry(record.id.clone()).or_default();
            spent.uses -= 1;
            spent.points -= record.points;
            spent.amount_minor -= record.amount_minor;
            if let Some(code) = &record.code {
                if record.scratch {
                    let issued = state
                        .scratch
                        .get_mut(code.as_str())
                        .expect("an issued code");
                    issued.used = false;
                }
                view.code = Some(code.clone());
                view.code_returned = true;
            }
        }
        // A use given back silently (nothing to hand back, no code) is not listed.
        if take.take || view.code_returned {
            applied.promotions.push(view);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

fn promotion_of<'p>(
    program: &'p Program,
    id: &str,
    kind: PromotionKind,
    kind_name: &str,
) -> Result<&'p Promotion, Rejection> {
    match program.promotions.by_id.get(id) {
        Some(&i) if program.promotions.list[i as usize].kind == kind => {
            Ok(&program.promotions.list[i as usize])
        }
        Some(_) => reject(
            Reason::Invalid,
            format!("promotion {id:?} is not a {kind_name} promotion"),
        ),
        None => reject(
            Reason::Invalid,
            format!("the program has no promotion {id:?}"),
        ),
    }
}

/// Gives a `regular` promotion to members, or to every member holding a tier.
pub(super) fn assign(
    merchant: &mut Merchant,
    ctx: &Ctx,
    assign: &AssignPromotion,
) -> Result<Applied, Rejection> {
    let program = ctx.program.clone();
    let promotion = promotion_of(
        &program,
        &assign.promotion,
        PromotionKind::Regular,
        "regular",
    )?;
    if assign.members.is_empty() == assign.tier.is_none() {
        return reject(
            Reason::Invalid,
            "assign a promotion to `members` or to a `tier`",
        );
    }
    if assign.members.len() > MAX_MEMBERS_PER_ASSIGNMENT {
        return reject(
            Reason::Invalid,
            format!("at most {MAX_MEMBERS_PER_ASSIGNMENT} members per command"),
        );
    }
    let indexes = member_indexes(merchant, &assign.members)?;
    let state = &mut merchant.promotions;
    if let Some(tier) = &assign.tier {
        let Some(t) = program.tier_index(tier) else {
            return reject(Reason::Invalid, format!("no tier has id {tier:?}"));
        };
        let pair = (program.tiers[t].id.clone(), promotion.id.clone());
        if !state.tier_assignments.contains(&pair) {
            if state.tier_assignments.len() >= MAX_TIER_ASSIGNMENTS {
                return reject(Reason::Invalid, "too many tier assignments");
            }
            state.tier_assignments.push(pair);
        }
    }
    let full = indexes.iter().any(|i| {
        state.member(Some(*i)).is_some_and(|m| {
            m.assigned.len() >= MAX_ASSIGNMENTS_PER_MEMBER && !m.assigned.contains(&promotion.id)
        })
    });
    if full {
        return reject(
            Reason::Invalid,
            format!("a member holds at most {MAX_ASSIGNMENTS_PER_MEMBER} assigned promotions"),
        );
    }
    for index in indexes {
        let member = state.members.entry(index).or_default();
        if !member.assigned.contains(&promotion.id) {
            member.assigned.push(promotion.id.clone());
        }
    }
    Ok(Applied {
        program_version: program.version,
        ..Applied::default()
    })
}

fn member_indexes(merchant: &Merchant, members: &[MemberRef]) -> Result<Vec<u32>, Rejection> {
    let mut indexes = Vec::with_capacity(members.len());
    for member in members {
        match resolve(merchant, member, false)? {
            Who::Existing(index) | Who::Activate(index) => indexes.push(index),
            Who::New(_) => unreachable!("resolve without enrolment finds or rejects"),
        }
    }
    Ok(indexes)
}

/// Generates single-use codes of a `scratch` promotion from the command's seed.
///
/// ChaCha20 keyed by the 256-bit seed is a cryptographic generator: without the seed, no
/// code tells anything about another, and each code carries 80 random bits. Because the seed
/// travels in the command, replaying the log gives the same codes.
pub(super) fn issue_codes(
    merchant: &mut Merchant,
    ctx: &Ctx,
    issue: &IssueCodes,
) -> Result<Applied, Rejection> {
    let program = ctx.program.clone();
    let promotion = promotion_of(
        &program,
        &issue.promotion,
        PromotionKind::Scratch,
        "scratch",
    )?;
    if !(1..=MAX_CODES_PER_COMMAND).contains(&issue.count) {
        return reject(
            Reason::Invalid,
            format!("`count` must be 1..={MAX_CODES_PER_COMMAND}"),
        );
    }
    let seed = parse_seed(&issue.seed)?;
    let state = &mut merchant.promotions;
    if state.scratch.len() + issue.count as usize > MAX_CODES_PER_MERCHANT {
        return reject(
            Reason::Invalid,
            format!("a merchant has at most {MAX_CODES_PER_MERCHANT} scratch codes"),
        );
    }
    let mut draws = CodeDraws::new(seed);
    let mut codes: Vec<String> = Vec::with_capacity(issue.count as usize);
    let mut fresh: FxHashMap<Box<str>, ()> = FxHashMap::default();
    // Bounded: a reused seed repeats earlier codes, and is refused rather than looped on.
    let attempts = 2 * issue.count as usize + 16;
    for _ in 0..attempts {
        if codes.len() == issue.count as usize {
            break;
        }
        let code = draws.next_code();
        let taken = state.scratch.contains_key(code.as_str())
            || fresh.contains_key(code.as_str())
            || program.promotions.by_code.contains_key(&code);
        if !taken {
            fresh.insert(code.clone().into_boxed_str(), ());
            codes.push(code);
        }
    }
    if codes.len() < issue.count as usize {
        return reject(
            Reason::Invalid,
            "this seed gives codes that exist already: choose a new random seed",
        );
    }
    for code in &codes {
        state.scratch.insert(
            code.clone().into_boxed_str(),
            ScratchCode {
                promotion: promotion.id.clone(),
                used: false,
            },
        );
    }
    Ok(Applied {
        program_version: program.version,
        codes: codes.iter().map(|c| display_code(c)).collect(),
        ..Applied::default()
    })
}

fn parse_seed(text: &str) -> Result<[u8; 32], Rejection> {
    let valid = text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return reject(
            Reason::Invalid,
            "`seed` must be 64 hex digits (256 random bits)",
        );
    }
    let mut seed = [0u8; 32];
    for (i, byte) in seed.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex checked");
    }
    Ok(seed)
}

/// The stream of candidate scratch codes a seed gives: 80 random bits each, as 16 Crockford
/// base-32 characters (normalised form, no dashes).
struct CodeDraws(rand_chacha::ChaCha20Rng);

impl CodeDraws {
    fn new(seed: [u8; 32]) -> CodeDraws {
        CodeDraws(rand_chacha::ChaCha20Rng::from_seed(seed))
    }

    fn next_code(&mut self) -> String {
        let bits = (u128::from(self.0.next_u64()) << 16) | u128::from(self.0.next_u32() & 0xFFFF);
        (0..SCRATCH_CODE_CHARS)
            .map(|i| {
                CROCKFORD[((bits >> (5 * (SCRATCH_CODE_CHARS - 1 - i))) & 31) as usize] as char
            })
            .collect()
    }
}

/// The first `count` codes a seed gives, as `issue_codes` prints them for a merchant that has
/// no scratch codes yet (synthetic traffic uses it to present real codes).
pub fn scratch_codes(seed: [u8; 32], count: usize) -> Vec<String> {
    let mut draws = CodeDraws::new(seed);
    (0..count)
        .map(|_| display_code(&draws.next_code()))
        .collect()
}

/// `ABCD-EFGH-JKMN-PQRS`: groups of four are easier to read off a card.
fn display_code(code: &str) -> String {
    code.as_bytes()
        .chunks(4)
        .map(|chunk| std::str::from_utf8(chunk).expect("ASCII"))
        .collect::<Vec<_>>()
        .join("-")
}

/// Adds and removes a member's tags (promotion conditions read them).
pub(super) fn tag(merchant: &mut Merchant, ctx: &Ctx, tag: &Tag) -> Result<Applied, Rejection> {
    let (Who::Existing(index) | Who::Activate(index)) = resolve(merchant, &tag.member, false)?
    else {
        unreachable!("resolve without enrolment finds or rejects")
    };
    let bad = |t: &String| t.trim().is_empty() || t.len() > MAX_TAG_LEN;
    if tag.add.iter().chain(&tag.remove).any(bad) || tag.add.len() + tag.remove.len() > 2 * MAX_TAGS
    {
        return reject(
            Reason::Invalid,
            format!("tags are 1 to {MAX_TAG_LEN} characters, at most {MAX_TAGS}"),
        );
    }
    let member = &mut merchant.members[index as usize];
    let mut tags = member.tags.clone();
    tags.retain(|t| !tag.remove.contains(t));
    for added in &tag.add {
        if !tags.contains(added) {
            tags.push(added.clone());
        }
    }
    if tags.len() > MAX_TAGS {
        return reject(
            Reason::Invalid,
            format!("a member has at most {MAX_TAGS} tags"),
        );
    }
    member.tags = tags;
    let tier = member.tier;
    let mut applied = Applied::default();
    finish_member(merchant, ctx, index, false, tier, &mut applied);
    Ok(applied)
}
