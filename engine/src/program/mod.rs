//! Programs: a merchant's rules, parsed from TOML, validated with a precise place for every
//! mistake, and compiled into a form that is quick to evaluate (SKU and category indexes
//! into rule bitmasks, money in minor units, rates in ten-thousandths).

mod compile;
mod file;
pub mod promotions;

use std::sync::Arc;

use chrono::TimeDelta;
use chrono_tz::Tz;
use rustc_hash::FxHashMap;
use tally_protocol::Name;

pub use compile::{compile, parse_and_compile, ProgramError, ProgramErrors};
pub use file::{Combine, Downgrade, NegativeBalance};
pub use promotions::{Promotion, PromotionKind, Promotions};

use crate::Timestamp;

/// At most this many order rules per program: a line's matching rules fit in one `RuleMask`.
pub const MAX_ORDER_RULES: usize = 256;
pub const MAX_TIERS: usize = 32;
/// Rolling tier windows are at most three years long.
pub const MAX_ROLLING_MONTHS: u32 = 36;

/// A set of order rules, by index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuleMask([u64; MAX_ORDER_RULES / 64]);

impl RuleMask {
    pub fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }
    pub fn contains(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }
    pub fn union(self, other: RuleMask) -> RuleMask {
        RuleMask(std::array::from_fn(|i| self.0[i] | other.0[i]))
    }
    pub fn minus(self, other: RuleMask) -> RuleMask {
        RuleMask(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }
}

/// Which order rules a SKU or a category turns on and which it excludes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selection {
    pub include: RuleMask,
    pub exclude: RuleMask,
}

/// A compiled, immutable program version.
#[derive(Debug)]
pub struct Program {
    pub merchant: String,
    pub version: u32,
    pub name: String,
    pub currency: String,
    pub minor_units: u32,
    pub zone: Tz,
    pub country_code: String,
    /// Value of one point, in millionths of a currency unit.
    pub point_value_micro: i64,
    pub max_redeem_percent_e4: i64,
    pub min_redeem_points: i64,
    pub pending: TimeDelta,
    pub expiry: Expiry,
    pub negative_balance: NegativeBalance,
    pub hold_timeout: TimeDelta,
    pub late_event: TimeDelta,
    /// Rules evaluated on orders, in file order; their index is their bit in a `RuleMask`.
    pub order_rules: Vec<Rule>,
    /// `per_event` rules.
    pub event_rules: Vec<Rule>,
    /// In rank order, lowest first.
    pub tiers: Vec<Tier>,
    pub rewards: FxHashMap<String, Reward>,
    /// Promotions, indexed by what can trigger them.
    pub promotions: Promotions,
    pub sku_selection: FxHashMap<String, Selection>,
    pub category_selection: FxHashMap<String, Selection>,
    /// Rules that select every line unless excluded.
    pub all_lines: RuleMask,
    /// Some rule filters on weekday or hour, so orders need their local time.
    pub uses_local_time: bool,
    /// Birthday bonuses exist (a `per_event` rule for "birthday" or a tier benefit).
    pub has_birthday_bonus: bool,
    /// Months of tier counters members must keep (0: only lifetime totals are needed).
    pub tier_months_kept: u32,
    /// Tiers are re-evaluated (and may fall) at each local month start.
    pub reevaluates_at_month_start: bool,
    /// The TOML this was compiled from.
    pub source: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    AfterDays(u32),
    EndOfMonth,
    EndOfYear,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: Name,
    pub award: Award,
    pub filter: Filter,
    /// For `per_event`: the event name.
    pub event: Option<String>,
    /// For `per_event`: how often one member can earn it.
    pub limit_per_member: Option<u32>,
    /// Some line selection (SKUs or categories) narrows the rule.
    pub selects_lines: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Award {
    /// Points per 1.00 of eligible amount, × 10,000.
    PerAmount { points_e4: i64 },
    /// Points per unit of a selected line, × 10,000.
    PerUnit { points_e4: i64 },
    /// Points once per qualifying order, × 10,000.
    PerOrder { points_e4: i64 },
    /// Points per member event, × 10,000.
    PerEvent { points_e4: i64 },
    /// Percent of eligible amount into credit, × 10,000.
    Cashback { percent_e4: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub channels: Vec<String>,
    pub stores: Vec<String>,
    /// Tier indexes; empty means any tier (and none).
    pub tiers: Vec<usize>,
    pub valid_from: Option<Timestamp>,
    pub valid_to: Option<Timestamp>,
    /// Bit 0 is Monday; 0 means every day.
    pub weekdays: u8,
    /// Local minutes since midnight, `[from, to)`; wraps past midnight when `from > to`.
    pub hours: Option<(u32, u32)>,
    pub min_total_minor: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Lifetime,
    CalendarYear,
    RollingMonths(u32),
}

#[derive(Debug, Clone)]
pub struct Tier {
    pub id: Name,
    pub name: String,
    pub color: String,
    pub image_url: String,
    pub active: bool,
    pub window: Window,
    pub combine: Combine,
    pub points_earned: Option<i64>,
    pub amount_spent_minor: Option<i64>,
    pub orders: Option<u32>,
    pub downgrade: Downgrade,
    pub multiplier_e4: i64,
    pub cashback_percent_e4: i64,
    pub birthday_bonus: i64,
    /// How the tier's cashback and birthday bonus are named in results and entries.
    pub cashback_rule: Name,
    pub birthday_rule: Name,
}

#[derive(Debug, Clone)]
pub struct Reward {
    pub id: Name,
    pub name: String,
    pub points: i64,
    pub action: RewardAction,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewardAction {
    /// One unit of this SKU in the order becomes free.
    FreeProduct {
        sku: String,
    },
    PercentDiscount {
        percent_e4: i64,
    },
    FixedDiscount {
        amount_minor: i64,
    },
    /// The order's shipping becomes free.
    FreeShipping,
}

impl Program {
    pub fn tier_index(&self, id: &str) -> Option<usize> {
        self.tiers.iter().position(|tier| &*tier.id == id)
    }

    /// The id of the tier at `index`, as results name it.
    pub fn tier_id(&self, index: Option<usize>) -> Option<Name> {
        index.map(|i| self.tiers[i].id.clone())
    }

    pub fn multiplier_e4(&self, tier: Option<usize>) -> i64 {
        tier.map_or(crate::money::RATE_SCALE, |i| self.tiers[i].multiplier_e4)
    }
}
