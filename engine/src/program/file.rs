//! The program file exactly as written (TOML). `compile` turns it into `Program`.

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::Timestamp;

/// An instant: a TOML offset date-time (`2026-06-01T04:00:00Z`) or the same as a string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TimeFile {
    Toml(toml::value::Datetime),
    Text(String),
}

impl TimeFile {
    pub fn instant(&self) -> Result<Timestamp, String> {
        let text = match self {
            TimeFile::Toml(datetime) => datetime.to_string(),
            TimeFile::Text(text) => text.clone(),
        };
        chrono::DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|_| {
                format!(
                    "{text:?} is not a date and time with a UTC offset (like 2026-06-01T04:00:00Z)"
                )
            })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramFile {
    pub merchant: String,
    pub version: u32,
    #[serde(default)]
    pub name: String,
    pub currency: String,
    pub currency_minor_units: Option<u32>,
    pub time_zone: String,
    #[serde(default = "default_country_code")]
    pub country_code: String,
    pub point_value: Decimal,
    #[serde(default = "default_max_redeem_percent")]
    pub max_redeem_percent: Decimal,
    #[serde(default)]
    pub min_redeem_points: i64,
    #[serde(default)]
    pub pending_days: u32,
    #[serde(default)]
    pub expiry: ExpiryFile,
    #[serde(default)]
    pub negative_balance: NegativeBalance,
    #[serde(default = "default_hold_timeout_s")]
    pub hold_timeout_s: u32,
    #[serde(default = "default_late_event_days")]
    pub late_event_days: u32,
    #[serde(default)]
    pub rules: Vec<RuleFile>,
    #[serde(default)]
    pub tiers: Vec<TierFile>,
    #[serde(default)]
    pub rewards: Vec<RewardFile>,
    #[serde(default)]
    pub promotions: Vec<super::promotions::PromotionFile>,
}

fn default_country_code() -> String {
    "1".into()
}
fn default_max_redeem_percent() -> Decimal {
    Decimal::ONE_HUNDRED
}
fn default_hold_timeout_s() -> u32 {
    900
}
fn default_late_event_days() -> u32 {
    30
}

/// `expiry = "never"`, `expiry = { after_days = 365 }` or `expiry = { end_of = "month" }`.
#[derive(Debug, Deserialize, Default)]
#[serde(untagged)]
pub enum ExpiryFile {
    #[default]
    #[serde(skip)]
    Default,
    Word(String),
    Table(ExpiryTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiryTable {
    pub after_days: Option<u32>,
    pub end_of: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NegativeBalance {
    #[default]
    Allow,
    Clamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    PerAmount,
    PerUnit,
    PerOrder,
    PerEvent,
    Cashback,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub id: String,
    pub kind: RuleKind,
    pub points: Option<Decimal>,
    pub percent: Option<Decimal>,
    pub event: Option<String>,
    pub limit_per_member: Option<u32>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub stores: Vec<String>,
    #[serde(default)]
    pub tiers: Vec<String>,
    pub valid_from: Option<TimeFile>,
    pub valid_to: Option<TimeFile>,
    #[serde(default)]
    pub weekdays: Vec<String>,
    pub hours: Option<Vec<String>>,
    pub min_total: Option<Decimal>,
    #[serde(default)]
    pub skus: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub exclude_skus: Vec<String>,
    #[serde(default)]
    pub exclude_categories: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    #[default]
    Lifetime,
    CalendarYear,
    Rolling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    #[default]
    Any,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Downgrade {
    #[default]
    Window,
    Never,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierFile {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub color: String,
    #[serde(default)]
    pub image_url: String,
    #[serde(default = "default_true")]
    pub active: bool,
    /// Absent: `rolling` if `rolling_months` is given, else `lifetime`.
    pub window: Option<WindowKind>,
    pub rolling_months: Option<u32>,
    #[serde(default)]
    pub combine: Combine,
    pub points_earned: Option<i64>,
    pub amount_spent: Option<Decimal>,
    pub orders: Option<u32>,
    #[serde(default)]
    pub downgrade: Downgrade,
    pub earn_multiplier: Option<Decimal>,
    pub cashback_percent: Option<Decimal>,
    pub birthday_bonus: Option<i64>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    FreeProduct,
    PercentDiscount,
    FixedDiscount,
    FreeShipping,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardFile {
    pub id: String,
    pub name: String,
    pub kind: RewardKind,
    pub points: i64,
    pub sku: Option<String>,
    pub percent: Option<Decimal>,
    pub amount: Option<Decimal>,
}
