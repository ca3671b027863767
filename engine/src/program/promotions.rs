//! Promotions in the program file: their schema as written, their validation (every mistake
//! with its place, like `promotions[2].cases[0].actions[1].percent`), and the compiled form
//! with an index by what can trigger each promotion (code, SKU, category, kind), so an order
//! looks only at the promotions it can possibly meet instead of scanning all of them.

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::Deserialize;
use tally_protocol::Name;

use super::file::TimeFile;
use crate::money::{to_minor, to_rate, RATE_SCALE};
use crate::Timestamp;

/// Bounds on a program's promotions, so no program can make an order do unbounded work.
pub const MAX_PROMOTIONS: usize = 2_000;
pub const MAX_CASES_PER_PROMOTION: usize = 16;
pub const MAX_ACTIONS_PER_CASE: usize = 8;
pub const MAX_CONTAINS_PER_CASE: usize = 16;
pub const MAX_NAMES_PER_LIST: usize = 64;
pub const MAX_PUNCHES_PER_CARD: u32 = 100;
pub const MAX_CODE_LEN: usize = 32;
pub const MAX_TEXT_LEN: usize = 1_000;

// ---------------------------------------------------------------------------------------------
// The file as written
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionKind {
    Regular,
    Code,
    PunchCard,
    Scratch,
    ExternalGift,
    Benefit,
}

impl PromotionKind {
    /// Kinds considered for every order, without anything from the member.
    pub fn automatic(self) -> bool {
        matches!(
            self,
            PromotionKind::PunchCard | PromotionKind::ExternalGift | PromotionKind::Benefit
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionFile {
    pub id: String,
    pub kind: PromotionKind,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub gift_type: String,
    #[serde(default)]
    pub image_url: String,
    pub valid_from: Option<TimeFile>,
    pub valid_to: Option<TimeFile>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub stores: Vec<String>,
    #[serde(default)]
    pub tiers: Vec<String>,
    pub limit_per_member: Option<u32>,
    pub budget: Option<BudgetFile>,
    pub code: Option<String>,
    pub punches: Option<u32>,
    #[serde(default)]
    pub cases: Vec<CaseFile>,
    #[serde(default)]
    pub reward: Vec<ActionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    pub uses: Option<u64>,
    pub points: Option<i64>,
    pub amount: Option<Decimal>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub conditions: ConditionsFile,
    #[serde(default)]
    pub actions: Vec<ActionFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionsFile {
    pub min_total: Option<Decimal>,
    #[serde(default)]
    pub contains: Vec<ContainsFile>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub stores: Vec<String>,
    pub min_tier: Option<String>,
    #[serde(default)]
    pub weekdays: Vec<String>,
    pub hours: Option<Vec<String>>,
    pub nth_order: Option<u32>,
    pub member_tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainsFile {
    pub sku: Option<String>,
    pub category: Option<String>,
    #[serde(default = "one")]
    pub qty: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    AwardPoints,
    MultiplyPoints,
    PercentDiscount,
    FixedDiscount,
    FreeProduct,
    FreeShipping,
    ExternalGift,
    Punch,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionFile {
    pub kind: ActionKind,
    pub points: Option<i64>,
    pub factor: Option<Decimal>,
    pub percent: Option<Decimal>,
    pub amount: Option<Decimal>,
    #[serde(default)]
    pub skus: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    pub sku: Option<String>,
    pub qty: Option<i64>,
    pub gift: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Compiled
// ---------------------------------------------------------------------------------------------

/// A program's promotions and the index an order is matched against.
#[derive(Debug, Default)]
pub struct Promotions {
    /// In file order: the order they are evaluated in.
    pub list: Vec<Promotion>,
    pub by_id: FxHashMap<Name, u32>,
    /// `code` promotions by their normalised code.
    pub by_code: FxHashMap<String, u32>,
    /// Automatic promotions (benefit, punch card, external gift) that only an order with one
    /// of these SKUs or categories can meet, and those any order may meet.
    pub automatic_by_sku: FxHashMap<String, Vec<u32>>,
    pub automatic_by_category: FxHashMap<String, Vec<u32>>,
    pub automatic_always: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct Promotion {
    pub id: Name,
    /// How its points are named in results and ledger entries: `promotion:<id>`.
    pub rule: Name,
    pub kind: PromotionKind,
    pub title: String,
    pub description: String,
    pub gift_type: String,
    pub image_url: String,
    pub valid_from: Option<Timestamp>,
    pub valid_to: Option<Timestamp>,
    pub channels: Vec<String>,
    pub stores: Vec<String>,
    /// Tier ids (not indexes: assignments outlive program versions).
    pub tiers: Vec<Name>,
    pub limit_per_member: Option<u32>,
    pub budget: Option<Budget>,
    pub code: Option<String>,
    /// Punch cards: holes that fill a card.
    pub punches: u32,
    pub cases: Vec<Case>,
    /// Punch cards: what a full card gives.
    pub reward: Vec<Action>,
}

impl Promotion {
    pub fn running_at(&self, at: Timestamp) -> bool {
        self.valid_from.is_none_or(|from| at >= from) && self.valid_to.is_none_or(|to| at < to)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    Uses(u64),
    Points(i64),
    AmountMinor(i64),
}

#[derive(Debug, Clone, Default)]
pub struct Case {
    pub conditions: Conditions,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub min_total_minor: Option<i64>,
    pub contains: Vec<Contains>,
    pub channels: Vec<String>,
    pub stores: Vec<String>,
    /// Tier index in this program version.
    pub min_tier: Option<usize>,
    /// Bit 0 is Monday; 0 means every day.
    pub weekdays: u8,
    /// Local minutes since midnight, `[from, to)`; wraps past midnight when `from > to`.
    pub hours: Option<(u32, u32)>,
    pub nth_order: Option<u32>,
    pub member_tag: Option<String>,
}

/// At least `qty` units of lines with this SKU or in this category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contains {
    pub target: Target,
    pub qty: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Sku(String),
    Category(String),
}

impl Target {
    pub fn matches(&self, sku: &str, category: Option<&str>) -> bool {
        match self {
            Target::Sku(wanted) => wanted == sku,
            Target::Category(wanted) => category == Some(wanted.as_str()),
        }
    }
}

/// Lines an action works on: some SKUs or categories, or (both empty) every line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LineChoice {
    pub skus: Vec<String>,
    pub categories: Vec<String>,
}

impl LineChoice {
    pub fn chooses(&self, sku: &str, category: Option<&str>) -> bool {
        (self.skus.is_empty() && self.categories.is_empty())
            || self.skus.iter().any(|s| s == sku)
            || category.is_some_and(|c| self.categories.iter().any(|w| w == c))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    AwardPoints {
        points: i64,
    },
    /// The order's points from earning rules × factor: `factor_e4 − 10,000` of them extra.
    MultiplyPoints {
        factor_e4: i64,
    },
    PercentDiscount {
        percent_e4: i64,
        lines: LineChoice,
    },
    FixedDiscount {
        amount_minor: i64,
        lines: LineChoice,
    },
    FreeProduct {
        sku: String,
        qty: i64,
    },
    FreeShipping,
    ExternalGift {
        gift: Name,
    },
    Punch,
}

// ---------------------------------------------------------------------------------------------
// Validation and compilation
// ---------------------------------------------------------------------------------------------

/// Where promotion mistakes go: the program compiler's list.
pub trait Report {
    fn fail(&mut self, path: String, message: String);
}

/// The normal form codes are compared in: no spaces or dashes, capital letters.
pub fn normalize_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

pub struct Context<'a> {
    pub tier_ids: &'a [&'a str],
    pub minor_units: u32,
}

pub fn compile(r: &mut dyn Report, files: &[PromotionFile], cx: &Context) -> Promotions {
    if files.len() > MAX_PROMOTIONS {
        r.fail(
            "promotions".into(),
            format!("at most {MAX_PROMOTIONS} promotions"),
        );
    }
    let mut promotions = Promotions::default();
    for (i, file) in files.iter().enumerate() {
        let promotion = promotion(r, i, file, cx);
        let index = promotions.list.len() as u32;
        if promotions
            .by_id
            .insert(promotion.id.clone(), index)
            .is_some()
        {
            r.fail(
                format!("promotions[{i}].id"),
                format!("{:?} is used by an earlier promotion", file.id),
            );
        }
        if let Some(code) = &promotion.code {
            if promotions.by_code.insert(code.clone(), index).is_some() {
                r.fail(
                    format!("promotions[{i}].code"),
                    format!("{code:?} is the code of an earlier promotion"),
                );
            }
        }
        promotions.list.push(promotion);
    }
    index_triggers(&mut promotions);
    promotions
}

/// Automatic promotions are found by what can trigger them: if every case needs some SKU or
/// category, only orders with one of those can meet it.
fn index_triggers(promotions: &mut Promotions) {
    for (index, promotion) in promotions.list.iter().enumerate() {
        if !promotion.kind.automatic() {
            continue;
        }
        let index = index as u32;
        let triggers: Option<Vec<&Target>> = promotion
            .cases
            .iter()
            .map(|case| case.conditions.contains.first().map(|c| &c.target))
            .collect();
        match triggers {
            Some(targets) if !targets.is_empty() => {
                for target in targets {
                    let list = match target {
                        Target::Sku(sku) => promotions.automatic_by_sku.entry(sku.clone()),
                        Target::Category(c) => promotions.automatic_by_category.entry(c.clone()),
                    }
                    .or_default();
                    if list.last() != Some(&index) {
                        list.push(index);
                    }
                }
            }
            _ => promotions.automatic_always.push(index),
        }
    }
}

fn promotion(r: &mut dyn Report, i: usize, file: &PromotionFile, cx: &Context) -> Promotion {
    let at = |field: &str| format!("promotions[{i}].{field}");
    let mut check = |ok: bool, path: String, message: &str| {
        if !ok {
            r.fail(path, message.to_string());
        }
    };
    check(!file.id.trim().is_empty(), at("id"), "must not be empty");
    check(
        file.id.len() <= 64,
        at("id"),
        "must be at most 64 characters",
    );
    check(
        !file.title.trim().is_empty(),
        at("title"),
        "must not be empty",
    );
    for (field, text) in [
        ("title", &file.title),
        ("description", &file.description),
        ("gift_type", &file.gift_type),
        ("image_url", &file.image_url),
    ] {
        check(
            text.len() <= MAX_TEXT_LEN,
            at(field),
            "must be at most 1000 characters",
        );
    }
    let valid_from = instant(r, &at("valid_from"), &file.valid_from);
    let valid_to = instant(r, &at("valid_to"), &file.valid_to);
    if let (Some(from), Some(to)) = (valid_from, valid_to) {
        if from >= to {
            r.fail(at("valid_to"), "must be after valid_from".into());
        }
    }
    names(r, &at("channels"), &file.channels);
    names(r, &at("stores"), &file.stores);
    let mut tiers = Vec::new();
    for (j, id) in file.tiers.iter().enumerate() {
        match cx.tier_ids.iter().find(|tier| **tier == id) {
            Some(tier) => tiers.push(Name::new(tier)),
            None => r.fail(
                format!("{}[{j}]", at("tiers")),
                format!("no tier has id {id:?}"),
            ),
        }
    }
    let limit_per_member = limit_per_member(r, &at("limit_per_member"), file);
    let budget = file
        .budget
        .as_ref()
        .map(|b| budget(r, &at("budget"), b, cx));
    let code = code(r, &at("code"), file);
    let punches = punches(r, &at("punches"), file);
    if file.cases.is_empty() {
        r.fail(at("cases"), "a promotion needs at least one case".into());
    }
    if file.cases.len() > MAX_CASES_PER_PROMOTION {
        r.fail(
            at("cases"),
            format!("at most {MAX_CASES_PER_PROMOTION} cases"),
        );
    }
    let cases: Vec<Case> = file
        .cases
        .iter()
        .enumerate()
        .map(|(k, case)| compile_case(r, &at(&format!("cases[{k}]")), case, cx))
        .collect();
    let reward = reward(r, &at("reward"), file, cx);
    check_kind(r, i, file, &cases, &reward, budget);
    Promotion {
        id: Name::new(&file.id),
        rule: Name::from(format!("promotion:{}", file.id)),
        kind: file.kind,
        title: file.title.clone(),
        description: file.description.clone(),
        gift_type: file.gift_type.clone(),
        image_url: file.image_url.clone(),
        valid_from,
        valid_to,
        channels: file.channels.clone(),
        stores: file.stores.clone(),
        tiers,
        limit_per_member,
        budget,
        code,
        punches,
        cases,
        reward,
    }
}

fn instant(r: &mut dyn Report, path: &str, time: &Option<TimeFile>) -> Option<Timestamp> {
    match time.as_ref().map(TimeFile::instant) {
        Some(Ok(at)) => Some(at),
        Some(Err(message)) => {
            r.fail(path.to_string(), message);
            None
        }
        None => None,
    }
}

fn names(r: &mut dyn Report, path: &str, values: &[String]) {
    if values.len() > MAX_NAMES_PER_LIST {
        r.fail(
            path.to_string(),
            format!("at most {MAX_NAMES_PER_LIST} names"),
        );
    }
    for (j, value) in values.iter().enumerate() {
        if value.trim().is_empty() || value.len() > 128 {
            r.fail(format!("{path}[{j}]"), "must be 1 to 128 characters".into());
        }
    }
}

fn limit_per_member(r: &mut dyn Report, path: &str, file: &PromotionFile) -> Option<u32> {
    match (file.kind, file.limit_per_member) {
        (_, Some(0)) => {
            r.fail(path.to_string(), "must be 1 or more".into());
            None
        }
        // A promotion code is used once per member.
        (PromotionKind::Code, Some(limit)) if limit != 1 => {
            r.fail(
                path.to_string(),
                "a code promotion is used once per member".into(),
            );
            Some(1)
        }
        (PromotionKind::Code, _) => Some(1),
        // A regular promotion is used once unless it says otherwise.
        (PromotionKind::Regular, None) => Some(1),
        (_, limit) => limit,
    }
}

fn budget(r: &mut dyn Report, path: &str, file: &BudgetFile, cx: &Context) -> Budget {
    match (file.uses, file.points, file.amount) {
        (Some(uses), None, None) => {
            if uses == 0 {
                r.fail(format!("{path}.uses"), "must be 1 or more".into());
            }
            Budget::Uses(uses)
        }
        (None, Some(points), None) => {
            if points <= 0 {
                r.fail(format!("{path}.points"), "must be 1 or more".into());
            }
            Budget::Points(points)
        }
        (None, None, Some(amount)) => {
            let minor = to_minor(amount, cx.minor_units).unwrap_or_else(|message| {
                r.fail(format!("{path}.amount"), message);
                1
            });
            if minor <= 0 {
                r.fail(format!("{path}.amount"), "must be more than 0".into());
            }
            Budget::AmountMinor(minor)
        }
        _ => {
            r.fail(
                path.to_string(),
                "give exactly one of `uses`, `points` or `amount`".into(),
            );
            Budget::Uses(1)
        }
    }
}

fn code(r: &mut dyn Report, path: &str, file: &PromotionFile) -> Option<String> {
    match (file.kind, &file.code) {
        (PromotionKind::Code, None) => {
            r.fail(path.to_string(), "a code promotion names its `code`".into());
            None
        }
        (PromotionKind::Code, Some(code)) => {
            let normal = normalize_code(code);
            let ok = (1..=MAX_CODE_LEN).contains(&normal.len())
                && normal
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                r.fail(
                    path.to_string(),
                    format!("must be 1 to {MAX_CODE_LEN} letters, digits, `-` or `_`"),
                );
            }
            Some(normal)
        }
        (_, Some(_)) => {
            r.fail(
                path.to_string(),
                "only code promotions have a `code` (scratch codes come from `issue_codes`)".into(),
            );
            None
        }
        (_, None) => None,
    }
}

fn punches(r: &mut dyn Report, path: &str, file: &PromotionFile) -> u32 {
    match (file.kind, file.punches) {
        (PromotionKind::PunchCard, Some(n)) => {
            if !(1..=MAX_PUNCHES_PER_CARD).contains(&n) {
                r.fail(
                    path.to_string(),
                    format!("must be 1..={MAX_PUNCHES_PER_CARD}"),
                );
            }
            n.clamp(1, MAX_PUNCHES_PER_CARD)
        }
        (PromotionKind::PunchCard, None) => {
            r.fail(
                path.to_string(),
                "a punch card says how many `punches` fill it".into(),
            );
            1
        }
        (_, Some(_)) => {
            r.fail(path.to_string(), "only punch cards have `punches`".into());
            0
        }
        (_, None) => 0,
    }
}

fn reward(r: &mut dyn Report, path: &str, file: &PromotionFile, cx: &Context) -> Vec<Action> {
    if file.kind != PromotionKind::PunchCard {
        if !file.reward.is_empty() {
            r.fail(path.to_string(), "only punch cards have a `reward`".into());
        }
        return Vec::new();
    }
    if file.reward.is_empty() || file.reward.len() > MAX_ACTIONS_PER_CASE {
        r.fail(
            path.to_string(),
            format!("a punch card gives 1 to {MAX_ACTIONS_PER_CASE} reward actions"),
        );
    }
    let actions: Vec<Action> = file
        .reward
        .iter()
        .enumerate()
        .map(|(j, a)| action(r, &format!("{path}[{j}]"), a, cx))
        .collect();
    for (j, action) in actions.iter().enumerate() {
        if matches!(action, Action::Punch | Action::MultiplyPoints { .. }) {
            r.fail(
                format!("{path}[{j}].kind"),
                "a card's reward cannot punch or multiply points".into(),
            );
        }
    }
    actions
}

/// Rules that tie actions and budgets to the promotion's kind.
fn check_kind(
    r: &mut dyn Report,
    i: usize,
    file: &PromotionFile,
    cases: &[Case],
    reward: &[Action],
    budget: Option<Budget>,
) {
    let punch_card = file.kind == PromotionKind::PunchCard;
    for (k, case) in cases.iter().enumerate() {
        let punches = case.actions.iter().filter(|a| **a == Action::Punch).count();
        if punch_card && punches != 1 {
            r.fail(
                format!("promotions[{i}].cases[{k}].actions"),
                "every case of a punch card punches once (`kind = \"punch\"`)".into(),
            );
        }
        if !punch_card && punches > 0 {
            r.fail(
                format!("promotions[{i}].cases[{k}].actions"),
                "only punch cards punch".into(),
            );
        }
    }
    let all_actions = || cases.iter().flat_map(|c| &c.actions).chain(reward);
    if file.kind == PromotionKind::ExternalGift
        && !all_actions().any(|a| matches!(a, Action::ExternalGift { .. }))
    {
        r.fail(
            format!("promotions[{i}].cases"),
            "an external_gift promotion hands over a gift (`kind = \"external_gift\"`)".into(),
        );
    }
    // Points are decided after the discounts: a points budget cannot stop a discount.
    let discounts = all_actions().any(|a| {
        matches!(
            a,
            Action::PercentDiscount { .. }
                | Action::FixedDiscount { .. }
                | Action::FreeProduct { .. }
                | Action::FreeShipping
        )
    });
    if matches!(budget, Some(Budget::Points(_))) && discounts {
        r.fail(
            format!("promotions[{i}].budget"),
            "a budget in points is for promotions that give only points and gifts".into(),
        );
    }
}

fn compile_case(r: &mut dyn Report, path: &str, file: &CaseFile, cx: &Context) -> Case {
    let conditions = conditions(r, &format!("{path}.conditions"), &file.conditions, cx);
    let actions_path = format!("{path}.actions");
    if file.actions.is_empty() || file.actions.len() > MAX_ACTIONS_PER_CASE {
        r.fail(
            actions_path.clone(),
            format!("a case has 1 to {MAX_ACTIONS_PER_CASE} actions"),
        );
    }
    let actions = file
        .actions
        .iter()
        .enumerate()
        .map(|(j, a)| action(r, &format!("{actions_path}[{j}]"), a, cx))
        .collect();
    Case {
        conditions,
        actions,
    }
}

fn conditions(r: &mut dyn Report, path: &str, file: &ConditionsFile, cx: &Context) -> Conditions {
    let min_total_minor = file.min_total.map(|total| {
        let minor = to_minor(total, cx.minor_units).unwrap_or_else(|message| {
            r.fail(format!("{path}.min_total"), message);
            0
        });
        if minor < 0 {
            r.fail(format!("{path}.min_total"), "must not be negative".into());
        }
        minor
    });
    if file.contains.len() > MAX_CONTAINS_PER_CASE {
        r.fail(
            format!("{path}.contains"),
            format!("at most {MAX_CONTAINS_PER_CASE} entries"),
        );
    }
    let contains = file
        .contains
        .iter()
        .enumerate()
        .map(|(j, c)| contains(r, &format!("{path}.contains[{j}]"), c))
        .collect();
    names(r, &format!("{path}.channels"), &file.channels);
    names(r, &format!("{path}.stores"), &file.stores);
    let min_tier = file.min_tier.as_ref().and_then(|id| {
        let index = cx.tier_ids.iter().position(|tier| tier == id);
        if index.is_none() {
            r.fail(format!("{path}.min_tier"), format!("no tier has id {id:?}"));
        }
        index
    });
    let weekdays = weekdays(r, &format!("{path}.weekdays"), &file.weekdays);
    let hours = file
        .hours
        .as_ref()
        .and_then(|hours| hours_of(r, &format!("{path}.hours"), hours));
    if file.nth_order == Some(0) {
        r.fail(
            format!("{path}.nth_order"),
            "must be 1 or more (1 is the first order)".into(),
        );
    }
    if let Some(tag) = &file.member_tag {
        if tag.trim().is_empty() || tag.len() > 64 {
            r.fail(
                format!("{path}.member_tag"),
                "must be 1 to 64 characters".into(),
            );
        }
    }
    Conditions {
        min_total_minor,
        contains,
        channels: file.channels.clone(),
        stores: file.stores.clone(),
        min_tier,
        weekdays,
        hours,
        nth_order: file.nth_order,
        member_tag: file.member_tag.clone(),
    }
}

fn contains(r: &mut dyn Report, path: &str, file: &ContainsFile) -> Contains {
    if file.qty < 1 || file.qty > 1_000_000 {
        r.fail(format!("{path}.qty"), "must be 1..=1000000".into());
    }
    let target = match (&file.sku, &file.category) {
        (Some(sku), None) if !sku.trim().is_empty() => Target::Sku(sku.clone()),
        (None, Some(category)) if !category.trim().is_empty() => Target::Category(category.clone()),
        _ => {
            r.fail(
                path.to_string(),
                "name exactly one of `sku` or `category`, not empty".into(),
            );
            Target::Sku(String::new())
        }
    };
    Contains {
        target,
        qty: file.qty,
    }
}

fn weekdays(r: &mut dyn Report, path: &str, days: &[String]) -> u8 {
    let mut bits = 0u8;
    for (j, day) in days.iter().enumerate() {
        match ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .position(|d| d == &day.to_ascii_lowercase())
        {
            Some(bit) => bits |= 1 << bit,
            None => r.fail(
                format!("{path}[{j}]"),
                format!("{day:?} is not a weekday (mon..sun)"),
            ),
        }
    }
    bits
}

fn hours_of(r: &mut dyn Report, path: &str, hours: &[String]) -> Option<(u32, u32)> {
    let [from, to] = hours else {
        r.fail(
            path.to_string(),
            "give [\"HH:MM\", \"HH:MM\"]: from (included) and to (excluded)".into(),
        );
        return None;
    };
    let mut minutes = |j: usize, text: &str| {
        super::compile::minutes_of_day(text)
            .map_err(|message| r.fail(format!("{path}[{j}]"), message))
            .ok()
    };
    let (from, to) = (minutes(0, from)?, minutes(1, to)?);
    if from == to {
        r.fail(path.to_string(), "from and to are the same time".into());
        return None;
    }
    Some((from, to))
}

fn action(r: &mut dyn Report, path: &str, file: &ActionFile, cx: &Context) -> Action {
    let field = |name: &str| format!("{path}.{name}");
    let allowed: &[&str] = match file.kind {
        ActionKind::AwardPoints => &["points"],
        ActionKind::MultiplyPoints => &["factor"],
        ActionKind::PercentDiscount => &["percent", "skus", "categories"],
        ActionKind::FixedDiscount => &["amount", "skus", "categories"],
        ActionKind::FreeProduct => &["sku", "qty"],
        ActionKind::FreeShipping | ActionKind::Punch => &[],
        ActionKind::ExternalGift => &["gift"],
    };
    let given = [
        ("points", file.points.is_some()),
        ("factor", file.factor.is_some()),
        ("percent", file.percent.is_some()),
        ("amount", file.amount.is_some()),
        ("skus", !file.skus.is_empty()),
        ("categories", !file.categories.is_empty()),
        ("sku", file.sku.is_some()),
        ("qty", file.qty.is_some()),
        ("gift", file.gift.is_some()),
    ];
    for (name, _) in given.iter().filter(|(n, g)| *g && !allowed.contains(n)) {
        r.fail(field(name), "does not belong to this kind of action".into());
    }
    names(r, &field("skus"), &file.skus);
    names(r, &field("categories"), &file.categories);
    let lines = LineChoice {
        skus: file.skus.clone(),
        categories: file.categories.clone(),
    };
    match file.kind {
        ActionKind::AwardPoints => {
            let points = file.points.unwrap_or(0);
            if !(1..=1_000_000_000).contains(&points) {
                r.fail(field("points"), "must be 1..=1000000000".into());
            }
            Action::AwardPoints { points }
        }
        ActionKind::MultiplyPoints => {
            let factor_e4 = rate(r, &field("factor"), file.factor);
            if factor_e4.is_some_and(|f| !(RATE_SCALE + 1..=100 * RATE_SCALE).contains(&f)) {
                r.fail(
                    field("factor"),
                    "must be more than 1 and at most 100".into(),
                );
            }
            Action::MultiplyPoints {
                factor_e4: factor_e4.unwrap_or(RATE_SCALE),
            }
        }
        ActionKind::PercentDiscount => {
            let percent_e4 = rate(r, &field("percent"), file.percent);
            if percent_e4.is_some_and(|p| !(0..=100 * RATE_SCALE).contains(&p)) {
                r.fail(field("percent"), "must be 0..=100".into());
            }
            Action::PercentDiscount {
                percent_e4: percent_e4.unwrap_or(0),
                lines,
            }
        }
        ActionKind::FixedDiscount => {
            let amount_minor = match file.amount.map(|a| to_minor(a, cx.minor_units)) {
                Some(Ok(minor)) if minor > 0 => minor,
                Some(Err(message)) => {
                    r.fail(field("amount"), message);
                    0
                }
                _ => {
                    r.fail(field("amount"), "must be more than 0".into());
                    0
                }
            };
            Action::FixedDiscount {
                amount_minor,
                lines,
            }
        }
        ActionKind::FreeProduct => {
            let sku = file.sku.clone().unwrap_or_default();
            if sku.trim().is_empty() {
                r.fail(field("sku"), "a free_product action names its `sku`".into());
            }
            let qty = file.qty.unwrap_or(1);
            if !(1..=1_000).contains(&qty) {
                r.fail(field("qty"), "must be 1..=1000".into());
            }
            Action::FreeProduct { sku, qty }
        }
        ActionKind::FreeShipping => Action::FreeShipping,
        ActionKind::ExternalGift => {
            let gift = file.gift.clone().unwrap_or_default();
            if gift.trim().is_empty() || gift.len() > 128 {
                r.fail(
                    field("gift"),
                    "an external_gift action names its `gift` (1 to 128 characters)".into(),
                );
            }
            Action::ExternalGift {
                gift: Name::new(&gift),
            }
        }
        ActionKind::Punch => Action::Punch,
    }
}

fn rate(r: &mut dyn Report, path: &str, value: Option<Decimal>) -> Option<i64> {
    match value.map(to_rate) {
        Some(Ok(e4)) => Some(e4),
        Some(Err(message)) => {
            r.fail(path.to_string(), message);
            None
        }
        None => {
            r.fail(
                path.to_string(),
                "is required for this kind of action".into(),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::program::parse_and_compile;

    const HEAD: &str = "merchant = \"m\"\nversion = 1\ncurrency = \"USD\"\ntime_zone = \"UTC\"\npoint_value = \"0.01\"\n[[tiers]]\nid = \"member\"\nname = \"Member\"\n";

    fn errors(promotions: &str) -> Vec<String> {
        match parse_and_compile(&format!("{HEAD}{promotions}")) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn names_each_mistake_with_its_place() {
        let text = r#"
[[promotions]]
id = "a"
kind = "benefit"
title = "A"
[[promotions.cases]]
actions = [{ kind = "award_points", points = 5 }]

[[promotions]]
id = "a"
kind = "code"
title = "B"
limit_per_member = 2
[[promotions.cases]]
conditions = { min_tier = "diamond", contains = [{ sku = "X", qty = 0 }], hours = ["07:00", "7pm"] }
actions = [{ kind = "award_points", points = 5 }]

[[promotions]]
id = "c"
kind = "benefit"
title = "C"
budget = { points = 10 }
[[promotions.cases]]
actions = [{ kind = "award_points", points = 5 }, { kind = "percent_discount", percent = 150 }, { kind = "punch" }]
"#;
        assert_eq!(
            errors(text),
            vec![
                "promotions[1].limit_per_member: a code promotion is used once per member",
                "promotions[1].code: a code promotion names its `code`",
                "promotions[1].cases[0].conditions.contains[0].qty: must be 1..=1000000",
                "promotions[1].cases[0].conditions.min_tier: no tier has id \"diamond\"",
                "promotions[1].cases[0].conditions.hours[1]: \"7pm\" is not a time \"HH:MM\" (00:00..=24:00)",
                "promotions[1].id: \"a\" is used by an earlier promotion",
                "promotions[2].cases[0].actions[1].percent: must be 0..=100",
                "promotions[2].cases[0].actions: only punch cards punch",
                "promotions[2].budget: a budget in points is for promotions that give only points and gifts",
            ]
        );
    }

    #[test]
    fn kinds_need_their_fields() {
        let text = r#"
[[promotions]]
id = "card"
kind = "punch_card"
title = "Card"
[[promotions.cases]]
actions = [{ kind = "award_points", points = 5, factor = 2 }]

[[promotions]]
id = "gift"
kind = "external_gift"
title = "Gift"
code = "X"
[[promotions.cases]]
actions = [{ kind = "free_product" }]
"#;
        assert_eq!(
            errors(text),
            vec![
                "promotions[0].punches: a punch card says how many `punches` fill it",
                "promotions[0].cases[0].actions[0].factor: does not belong to this kind of action",
                "promotions[0].reward: a punch card gives 1 to 8 reward actions",
                "promotions[0].cases[0].actions: every case of a punch card punches once (`kind = \"punch\"`)",
                "promotions[1].code: only code promotions have a `code` (scratch codes come from `issue_codes`)",
                "promotions[1].cases[0].actions[0].sku: a free_product action names its `sku`",
                "promotions[1].cases: an external_gift promotion hands over a gift (`kind = \"external_gift\"`)",
            ]
        );
    }

    #[test]
    fn indexes_automatic_promotions_by_what_triggers_them() {
        let text = r#"
[[promotions]]
id = "by_sku"
kind = "benefit"
title = "S"
[[promotions.cases]]
conditions = { contains = [{ sku = "LATTE" }] }
actions = [{ kind = "award_points", points = 1 }]
[[promotions.cases]]
conditions = { contains = [{ category = "pastry" }] }
actions = [{ kind = "award_points", points = 1 }]

[[promotions]]
id = "always"
kind = "benefit"
title = "A"
[[promotions.cases]]
conditions = { min_total = "5.00" }
actions = [{ kind = "award_points", points = 1 }]

[[promotions]]
id = "code"
kind = "code"
code = "sp-ring"
title = "C"
[[promotions.cases]]
actions = [{ kind = "award_points", points = 1 }]
"#;
        let program = parse_and_compile(&format!("{HEAD}{text}")).expect("valid");
        let index = &program.promotions;
        assert_eq!(index.automatic_by_sku["LATTE"], vec![0]);
        assert_eq!(index.automatic_by_category["pastry"], vec![0]);
        assert_eq!(index.automatic_always, vec![1]);
        assert_eq!(index.by_code["SPRING"], 2);
    }
}
