use std::str::FromStr;
use std::sync::Arc;

use chrono::TimeDelta;
use chrono_tz::Tz;
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

use super::file::*;
use super::*;
use crate::money::{to_minor, to_point_value, to_rate, RATE_SCALE};

/// One mistake in a program file, with its place (`tiers[2].rolling_months`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramError {
    pub path: String,
    pub message: String,
}

impl std::fmt::Display for ProgramError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every mistake found in a program file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ProgramErrors(pub Vec<ProgramError>);

impl std::fmt::Display for ProgramErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Parses TOML text and compiles it. Syntax and type mistakes come from the TOML reader with
/// their line and column; the rest are collected, all of them, with their paths.
pub fn parse_and_compile(text: &str) -> Result<Program, ProgramErrors> {
    let file: ProgramFile = toml::from_str(text).map_err(|error| {
        let place = match error.span() {
            Some(span) => {
                let line = text[..span.start].matches('\n').count() + 1;
                format!("line {line}")
            }
            None => "file".into(),
        };
        ProgramErrors(vec![ProgramError {
            path: place,
            message: error.message().trim().to_string(),
        }])
    })?;
    compile(file, Arc::from(text))
}

struct Checker {
    errors: Vec<ProgramError>,
}

impl promotions::Report for Checker {
    fn fail(&mut self, path: String, message: String) {
        Checker::fail(self, path, message);
    }
}

impl Checker {
    fn fail(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ProgramError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records the error of a conversion and gives back its value, or a placeholder.
    fn take<T: Default>(&mut self, path: impl Into<String>, result: Result<T, String>) -> T {
        result.unwrap_or_else(|message| {
            self.fail(path, message);
            T::default()
        })
    }

    fn check(&mut self, ok: bool, path: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.fail(path, message);
        }
    }

    fn names(&mut self, path: &str, values: &[String]) {
        for (i, value) in values.iter().enumerate() {
            self.check(
                !value.trim().is_empty(),
                format!("{path}[{i}]"),
                "must not be empty",
            );
        }
    }
}

pub fn compile(file: ProgramFile, source: Arc<str>) -> Result<Program, ProgramErrors> {
    let mut c = Checker { errors: Vec::new() };
    c.check(
        !file.merchant.trim().is_empty(),
        "merchant",
        "must not be empty",
    );
    c.check(file.version >= 1, "version", "must be 1 or more");
    let minor_units = currency_minor_units(&mut c, &file);
    let zone = c.take(
        "time_zone",
        Tz::from_str(&file.time_zone).map(Some).map_err(|_| {
            format!(
                "{:?} is not an IANA time zone (like \"America/New_York\")",
                file.time_zone
            )
        }),
    );
    let country_ok = (1..=3).contains(&file.country_code.len())
        && file.country_code.bytes().all(|b| b.is_ascii_digit());
    c.check(
        country_ok,
        "country_code",
        "must be 1 to 3 digits, like \"1\" or \"44\"",
    );
    let point_value_micro = c.take("point_value", to_point_value(file.point_value));
    c.check(
        point_value_micro > 0 || file.point_value <= Decimal::ZERO,
        "point_value",
        "must be at least 0.000001",
    );
    c.check(
        file.point_value > Decimal::ZERO,
        "point_value",
        "must be more than 0",
    );
    let max_redeem_percent_e4 = c.take("max_redeem_percent", to_rate(file.max_redeem_percent));
    c.check(
        (0..=100 * RATE_SCALE).contains(&max_redeem_percent_e4),
        "max_redeem_percent",
        "must be 0..=100",
    );
    c.check(
        file.min_redeem_points >= 0,
        "min_redeem_points",
        "must not be negative",
    );
    c.check(file.pending_days <= 365, "pending_days", "must be 0..=365");
    let expiry = expiry(&mut c, &file.expiry);
    c.check(
        (1..=30 * 86_400).contains(&file.hold_timeout_s),
        "hold_timeout_s",
        "must be 1..=2592000 (30 days)",
    );
    c.check(
        (1..=3650).contains(&file.late_event_days),
        "late_event_days",
        "must be 1..=3650",
    );

    let tiers = tiers(&mut c, &file.tiers, minor_units);
    let tier_ids: Vec<&str> = file.tiers.iter().map(|tier| tier.id.as_str()).collect();
    let (order_rules, event_rules) = rules(&mut c, &file.rules, &tier_ids, minor_units);
    let rewards = rewards(&mut c, &file.rewards, minor_units);
    let promotions = promotions::compile(
        &mut c,
        &file.promotions,
        &promotions::Context {
            tier_ids: &tier_ids,
            minor_units,
        },
    );

    if !c.errors.is_empty() {
        return Err(ProgramErrors(c.errors));
    }
    let (sku_selection, category_selection, all_lines) =
        index_selections(&file.rules, &order_rules);
    let uses_local_time = order_rules
        .iter()
        .chain(&event_rules)
        .any(|r| r.filter.weekdays != 0 || r.filter.hours.is_some());
    let has_birthday_bonus = event_rules
        .iter()
        .any(|r| r.event.as_deref() == Some("birthday"))
        || tiers.iter().any(|t| t.birthday_bonus > 0);
    let tier_months_kept = tiers
        .iter()
        .map(|t| months_kept(t.window))
        .max()
        .unwrap_or(0);
    let reevaluates_at_month_start = tiers
        .iter()
        .any(|t| t.window != Window::Lifetime && t.downgrade == Downgrade::Window);
    Ok(Program {
        merchant: file.merchant,
        version: file.version,
        name: file.name,
        currency: file.currency,
        minor_units,
        zone: zone.expect("checked"),
        country_code: file.country_code,
        point_value_micro,
        max_redeem_percent_e4,
        min_redeem_points: file.min_redeem_points,
        pending: TimeDelta::days(file.pending_days.into()),
        expiry,
        negative_balance: file.negative_balance,
        hold_timeout: TimeDelta::seconds(file.hold_timeout_s.into()),
        late_event: TimeDelta::days(file.late_event_days.into()),
        order_rules,
        event_rules,
        tiers,
        rewards,
        promotions,
        sku_selection,
        category_selection,
        all_lines,
        uses_local_time,
        has_birthday_bonus,
        tier_months_kept,
        reevaluates_at_month_start,
        source,
    })
}

fn months_kept(window: Window) -> u32 {
    match window {
        Window::Lifetime => 0,
        Window::CalendarYear => 12,
        Window::RollingMonths(months) => months,
    }
}

fn currency_minor_units(c: &mut Checker, file: &ProgramFile) -> u32 {
    let code_ok = file.currency.len() == 3 && file.currency.bytes().all(|b| b.is_ascii_uppercase());
    c.check(code_ok, "currency", "must be an ISO 4217 code like \"USD\"");
    let known = match file.currency.as_str() {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "XOF" | "XAF" | "UGX" | "PYG" | "RWF" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "LYD" | "IQD" => 3,
        _ => 2,
    };
    let minor_units = file.currency_minor_units.unwrap_or(known);
    c.check(minor_units <= 4, "currency_minor_units", "must be 0..=4");
    minor_units.min(4)
}

fn expiry(c: &mut Checker, expiry: &ExpiryFile) -> Expiry {
    match expiry {
        ExpiryFile::Default => Expiry::Never,
        ExpiryFile::Word(word) if word == "never" => Expiry::Never,
        ExpiryFile::Word(word) => {
            c.fail("expiry", format!("{word:?} is not an expiry: use \"never\", {{ after_days = N }} or {{ end_of = \"month\" }}"));
            Expiry::Never
        }
        ExpiryFile::Table(ExpiryTable {
            after_days: Some(days),
            end_of: None,
        }) => {
            c.check(
                (1..=3650).contains(days),
                "expiry.after_days",
                "must be 1..=3650",
            );
            Expiry::AfterDays(*days)
        }
        ExpiryFile::Table(ExpiryTable {
            after_days: None,
            end_of: Some(end),
        }) => match end.as_str() {
            "month" => Expiry::EndOfMonth,
            "year" => Expiry::EndOfYear,
            _ => {
                c.fail("expiry.end_of", "must be \"month\" or \"year\"");
                Expiry::Never
            }
        },
        ExpiryFile::Table(_) => {
            c.fail("expiry", "give exactly one of `after_days` or `end_of`");
            Expiry::Never
        }
    }
}

fn tiers(c: &mut Checker, tiers: &[TierFile], minor_units: u32) -> Vec<Tier> {
    c.check(
        tiers.len() <= MAX_TIERS,
        "tiers",
        format!("at most {MAX_TIERS} tiers"),
    );
    let mut compiled = Vec::with_capacity(tiers.len());
    for (i, tier) in tiers.iter().enumerate() {
        let at = |field: &str| format!("tiers[{i}].{field}");
        c.check(!tier.id.trim().is_empty(), at("id"), "must not be empty");
        if tiers[..i].iter().any(|earlier| earlier.id == tier.id) {
            c.fail(
                at("id"),
                format!("{:?} is used by an earlier tier", tier.id),
            );
        }
        c.check(
            !tier.name.trim().is_empty(),
            at("name"),
            "must not be empty",
        );
        let color_ok = tier.color.is_empty()
            || (tier.color.len() == 7
                && tier.color.starts_with('#')
                && tier.color[1..].bytes().all(|b| b.is_ascii_hexdigit()));
        c.check(color_ok, at("color"), "must be \"#RRGGBB\"");
        let window = match (
            tier.window.unwrap_or(if tier.rolling_months.is_some() {
                WindowKind::Rolling
            } else {
                WindowKind::Lifetime
            }),
            tier.rolling_months,
        ) {
            (WindowKind::Rolling, Some(months)) => {
                c.check(
                    (1..=MAX_ROLLING_MONTHS).contains(&months),
                    at("rolling_months"),
                    "must be 1..=36",
                );
                Window::RollingMonths(months.clamp(1, MAX_ROLLING_MONTHS))
            }
            (WindowKind::Rolling, None) => {
                c.fail(
                    at("rolling_months"),
                    "a rolling window needs `rolling_months`",
                );
                Window::Lifetime
            }
            (_, Some(_)) => {
                c.fail(at("rolling_months"), "only with window = \"rolling\"");
                Window::Lifetime
            }
            (WindowKind::Lifetime, None) => Window::Lifetime,
            (WindowKind::CalendarYear, None) => Window::CalendarYear,
        };
        if let Some(points) = tier.points_earned {
            c.check(points >= 0, at("points_earned"), "must not be negative");
        }
        let amount_spent_minor = tier
            .amount_spent
            .map(|amount| c.take(at("amount_spent"), to_minor(amount, minor_units)));
        if let Some(amount) = amount_spent_minor {
            c.check(amount >= 0, at("amount_spent"), "must not be negative");
        }
        let multiplier_e4 = tier
            .earn_multiplier
            .map_or(RATE_SCALE, |m| c.take(at("earn_multiplier"), to_rate(m)));
        c.check(
            (1..=100 * RATE_SCALE).contains(&multiplier_e4),
            at("earn_multiplier"),
            "must be more than 0 and at most 100",
        );
        let cashback_percent_e4 = tier
            .cashback_percent
            .map_or(0, |p| c.take(at("cashback_percent"), to_rate(p)));
        c.check(
            (0..=100 * RATE_SCALE).contains(&cashback_percent_e4),
            at("cashback_percent"),
            "must be 0..=100",
        );
        let birthday_bonus = tier.birthday_bonus.unwrap_or(0);
        c.check(
            birthday_bonus >= 0,
            at("birthday_bonus"),
            "must not be negative",
        );
        compiled.push(Tier {
            id: Name::new(&tier.id),
            name: tier.name.clone(),
            color: tier.color.clone(),
            image_url: tier.image_url.clone(),
            active: tier.active,
            window,
            combine: tier.combine,
            points_earned: tier.points_earned,
            amount_spent_minor,
            orders: tier.orders,
            downgrade: tier.downgrade,
            multiplier_e4,
            cashback_percent_e4,
            birthday_bonus,
            cashback_rule: Name::from(format!("tier:{}:cashback", tier.id)),
            birthday_rule: Name::from(format!("tier:{}:birthday_bonus", tier.id)),
        });
    }
    compiled
}

fn rules(
    c: &mut Checker,
    rules: &[RuleFile],
    tier_ids: &[&str],
    minor_units: u32,
) -> (Vec<Rule>, Vec<Rule>) {
    let mut order_rules = Vec::new();
    let mut event_rules = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = |field: &str| format!("rules[{i}].{field}");
        c.check(!rule.id.trim().is_empty(), at("id"), "must not be empty");
        if rules[..i].iter().any(|earlier| earlier.id == rule.id) {
            c.fail(
                at("id"),
                format!("{:?} is used by an earlier rule", rule.id),
            );
        }
        let award = award(c, rule, &at);
        let filter = filter(c, rule, tier_ids, minor_units, &at);
        for (field, values) in [
            ("skus", &rule.skus),
            ("categories", &rule.categories),
            ("exclude_skus", &rule.exclude_skus),
            ("exclude_categories", &rule.exclude_categories),
            ("channels", &rule.channels),
            ("stores", &rule.stores),
        ] {
            c.names(&at(field), values);
        }
        let selects_lines = !rule.skus.is_empty() || !rule.categories.is_empty();
        let compiled = Rule {
            id: Name::new(&rule.id),
            award,
            filter,
            event: rule.event.clone(),
            limit_per_member: rule.limit_per_member,
            selects_lines,
        };
        if rule.kind == RuleKind::PerEvent {
            event_rules.push(compiled);
        } else {
            order_rules.push(compiled);
        }
    }
    c.check(
        order_rules.len() <= MAX_ORDER_RULES,
        "rules",
        format!("at most {MAX_ORDER_RULES} order rules"),
    );
    (order_rules, event_rules)
}

fn award(c: &mut Checker, rule: &RuleFile, at: &dyn Fn(&str) -> String) -> Award {
    let is_event = rule.kind == RuleKind::PerEvent;
    match (is_event, &rule.event) {
        (true, None) => c.fail(at("event"), "a per_event rule names its `event`"),
        (true, Some(event)) => c.check(!event.trim().is_empty(), at("event"), "must not be empty"),
        (false, Some(_)) => c.fail(at("event"), "only per_event rules name an event"),
        (false, None) => {}
    }
    if rule.limit_per_member.is_some() && !is_event {
        c.fail(
            at("limit_per_member"),
            "only per_event rules have a per-member limit",
        );
    }
    if is_event {
        let order_only = !rule.channels.is_empty()
            || !rule.stores.is_empty()
            || rule.min_total.is_some()
            || !rule.skus.is_empty()
            || !rule.categories.is_empty()
            || !rule.exclude_skus.is_empty()
            || !rule.exclude_categories.is_empty();
        c.check(
            !order_only,
            at("kind"),
            "a per_event rule has no order filters (channels, stores, min_total, lines)",
        );
    }
    if rule.kind == RuleKind::Cashback {
        c.check(
            rule.points.is_none(),
            at("points"),
            "a cashback rule gives `percent`, not points",
        );
        let percent_e4 = match rule.percent {
            Some(percent) => c.take(at("percent"), to_rate(percent)),
            None => {
                c.fail(at("percent"), "a cashback rule needs `percent`");
                0
            }
        };
        c.check(
            percent_e4 > 0 && percent_e4 <= 100 * RATE_SCALE,
            at("percent"),
            "must be more than 0 and at most 100",
        );
        return Award::Cashback { percent_e4 };
    }
    c.check(
        rule.percent.is_none(),
        at("percent"),
        "only cashback rules give a percent",
    );
    let points_e4 = match rule.points {
        Some(points) => c.take(at("points"), to_rate(points)),
        None => {
            c.fail(at("points"), "this rule needs `points`");
            0
        }
    };
    c.check(points_e4 > 0, at("points"), "must be more than 0");
    match rule.kind {
        RuleKind::PerAmount => Award::PerAmount { points_e4 },
        RuleKind::PerUnit => Award::PerUnit { points_e4 },
        RuleKind::PerOrder => Award::PerOrder { points_e4 },
        RuleKind::PerEvent => Award::PerEvent { points_e4 },
        RuleKind::Cashback => unreachable!("handled above"),
    }
}

fn filter(
    c: &mut Checker,
    rule: &RuleFile,
    tier_ids: &[&str],
    minor_units: u32,
    at: &dyn Fn(&str) -> String,
) -> Filter {
    let mut tiers = Vec::new();
    for (j, id) in rule.tiers.iter().enumerate() {
        match tier_ids.iter().position(|tier| tier == id) {
            Some(index) => tiers.push(index),
            None => c.fail(
                format!("{}[{j}]", at("tiers")),
                format!("no tier has id {id:?}"),
            ),
        }
    }
    let valid_from = rule
        .valid_from
        .as_ref()
        .and_then(|t| c.take(at("valid_from"), t.instant().map(Some)));
    let valid_to = rule
        .valid_to
        .as_ref()
        .and_then(|t| c.take(at("valid_to"), t.instant().map(Some)));
    if let (Some(from), Some(to)) = (valid_from, valid_to) {
        c.check(from < to, at("valid_to"), "must be after valid_from");
    }
    let mut weekdays = 0u8;
    for (j, day) in rule.weekdays.iter().enumerate() {
        match ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .position(|d| d == &day.to_ascii_lowercase())
        {
            Some(bit) => weekdays |= 1 << bit,
            None => c.fail(
                format!("{}[{j}]", at("weekdays")),
                format!("{day:?} is not a weekday (mon..sun)"),
            ),
        }
    }
    let hours = rule
        .hours
        .as_ref()
        .and_then(|hours| match hours.as_slice() {
            [from, to] => {
                let from = c.take(
                    format!("{}[0]", at("hours")),
                    minutes_of_day(from).map(Some),
                );
                let to = c.take(format!("{}[1]", at("hours")), minutes_of_day(to).map(Some));
                if from.is_some() && from == to {
                    c.fail(at("hours"), "from and to are the same time");
                }
                from.zip(to)
            }
            _ => {
                c.fail(
                    at("hours"),
                    "give [\"HH:MM\", \"HH:MM\"]: from (included) and to (excluded)",
                );
                None
            }
        });
    let min_total_minor = rule
        .min_total
        .map(|total| c.take(at("min_total"), to_minor(total, minor_units)));
    if let Some(total) = min_total_minor {
        c.check(total >= 0, at("min_total"), "must not be negative");
    }
    Filter {
        channels: rule.channels.clone(),
        stores: rule.stores.clone(),
        tiers,
        valid_from,
        valid_to,
        weekdays,
        hours,
        min_total_minor,
    }
}

pub(super) fn minutes_of_day(text: &str) -> Result<u32, String> {
    let well_formed = text.len() == 5
        && text.as_bytes()[2] == b':'
        && text
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 2 || b.is_ascii_digit());
    let parsed = text
        .split_once(':')
        .filter(|_| well_formed)
        .and_then(|(h, m)| Some((h.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
        .filter(|(h, m)| (*h < 24 && *m < 60) || (*h == 24 && *m == 0));
    parsed
        .map(|(h, m)| h * 60 + m)
        .ok_or_else(|| format!("{text:?} is not a time \"HH:MM\" (00:00..=24:00)"))
}

fn rewards(c: &mut Checker, rewards: &[RewardFile], minor_units: u32) -> FxHashMap<String, Reward> {
    let mut compiled = FxHashMap::default();
    for (i, reward) in rewards.iter().enumerate() {
        let at = |field: &str| format!("rewards[{i}].{field}");
        c.check(!reward.id.trim().is_empty(), at("id"), "must not be empty");
        c.check(reward.points > 0, at("points"), "must be more than 0");
        c.check(
            reward.points <= crate::core::MAX_POINTS,
            at("points"),
            "must be at most 1,000,000,000,000,000",
        );
        let action = match reward.kind {
            RewardKind::FreeProduct => match &reward.sku {
                Some(sku) if !sku.trim().is_empty() => {
                    RewardAction::FreeProduct { sku: sku.clone() }
                }
                _ => {
                    c.fail(at("sku"), "a free_product reward names its `sku`");
                    RewardAction::FreeShipping
                }
            },
            RewardKind::PercentDiscount => {
                let percent_e4 = reward.percent.map_or(Ok(0), to_rate);
                let percent_e4 = c.take(at("percent"), percent_e4);
                c.check(
                    percent_e4 > 0 && percent_e4 <= 100 * RATE_SCALE,
                    at("percent"),
                    "must be more than 0 and at most 100",
                );
                RewardAction::PercentDiscount { percent_e4 }
            }
            RewardKind::FixedDiscount => {
                let amount_minor = reward.amount.map_or(Ok(0), |a| to_minor(a, minor_units));
                let amount_minor = c.take(at("amount"), amount_minor);
                c.check(amount_minor > 0, at("amount"), "must be more than 0");
                RewardAction::FixedDiscount { amount_minor }
            }
            RewardKind::FreeShipping => RewardAction::FreeShipping,
        };
        let extra = match reward.kind {
            RewardKind::FreeProduct => reward.percent.is_some() || reward.amount.is_some(),
            RewardKind::PercentDiscount => reward.sku.is_some() || reward.amount.is_some(),
            RewardKind::FixedDiscount => reward.sku.is_some() || reward.percent.is_some(),
            RewardKind::FreeShipping => {
                reward.sku.is_some() || reward.percent.is_some() || reward.amount.is_some()
            }
        };
        c.check(
            !extra,
            at("kind"),
            "has fields that belong to another kind of reward",
        );
        let compiled_reward = Reward {
            id: Name::new(&reward.id),
            name: reward.name.clone(),
            points: reward.points,
            action,
        };
        if compiled
            .insert(reward.id.clone(), compiled_reward)
            .is_some()
        {
            c.fail(
                at("id"),
                format!("{:?} is used by an earlier reward", reward.id),
            );
        }
    }
    compiled
}

type SelectionIndex = FxHashMap<String, Selection>;

/// Builds, for every SKU and category a rule names, the rules it turns on and off.
fn index_selections(
    files: &[RuleFile],
    order_rules: &[Rule],
) -> (SelectionIndex, SelectionIndex, RuleMask) {
    let mut skus = SelectionIndex::default();
    let mut categories = SelectionIndex::default();
    let mut all_lines = RuleMask::default();
    let order_files = files.iter().filter(|rule| rule.kind != RuleKind::PerEvent);
    for (index, (file, rule)) in order_files.zip(order_rules).enumerate() {
        debug_assert_eq!(file.id, &*rule.id);
        if !rule.selects_lines {
            all_lines.insert(index);
        }
        for sku in &file.skus {
            skus.entry(sku.clone()).or_default().include.insert(index);
        }
        for category in &file.categories {
            categories
                .entry(category.clone())
                .or_default()
                .include
                .insert(index);
        }
        for sku in &file.exclude_skus {
            skus.entry(sku.clone()).or_default().exclude.insert(index);
        }
        for category in &file.exclude_categories {
            categories
                .entry(category.clone())
                .or_default()
                .exclude
                .insert(index);
        }
    }
    (skus, categories, all_lines)
}

#[cfg(test)]
mod tests {
    use super::parse_and_compile;
    use crate::workload::DEMO_PROGRAM;

    /// Fifty of one reward in an order must not overflow the points they cost.
    #[test]
    fn a_reward_costs_at_most_a_quadrillion_points() {
        let text = DEMO_PROGRAM.replacen("points = 450", "points = 5000000000000000000", 1);
        assert_ne!(text, DEMO_PROGRAM);
        let errors = parse_and_compile(&text).unwrap_err().to_string();
        assert!(
            errors.contains("rewards[0].points: must be at most 1,000,000,000,000,000"),
            "{errors}"
        );
        let text = DEMO_PROGRAM.replacen("points = 450", "points = 1000000000000000", 1);
        assert!(parse_and_compile(&text).is_ok());
    }
}
