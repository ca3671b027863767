//! Reports for operators and analysts: liability (outstanding points valued at the point
//! value, by tier and by month of expiry), tier distribution, and the period's activity
//! (points and credit issued, redeemed, reversed and expired, by rule and promotion) from the
//! logged entries. As JSON, CSV, or an HTML page with charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::Datelike;
use rust_decimal::Decimal;
use serde::Serialize;
use tally_protocol::{EntryKind, Name, Wallet};

use crate::core::{Ledger, Merchant};
use crate::log::{CommandLog, LogError, LoggedEntry};
use crate::money::{from_minor, points_value_minor};
use crate::Timestamp;

/// The period whose activity is reported: from (inclusive) to (exclusive); open ends allowed.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Period {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

impl Period {
    fn contains(&self, at: Timestamp) -> bool {
        self.from.is_none_or(|from| at >= from) && self.to.is_none_or(|to| at < to)
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// The last log batch the report includes.
    pub log_position: Option<u64>,
    pub period: Period,
    pub merchants: Vec<MerchantReport>,
}

#[derive(Debug, Serialize)]
pub struct MerchantReport {
    pub merchant: String,
    pub currency: String,
    /// The merchant's clock: balances and expiry months are as of it.
    pub as_of: Timestamp,
    pub members: u64,
    pub points_outstanding: i64,
    pub points_value: Decimal,
    pub credit_outstanding: Decimal,
    pub by_tier: Vec<TierLine>,
    pub by_expiry_month: Vec<ExpiryLine>,
    pub activity: Vec<ActivityLine>,
    /// Points that expired in the period.
    pub breakage_points: i64,
    /// Members whose tier at the period's end differs from its start, by pair (absent when
    /// the period has no start, or the state at its start is not kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier_movements: Option<Vec<MovementLine>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MovementLine {
    /// Tier ids; empty for no tier. A member enrolled in the period moves from `new`.
    pub from: String,
    pub to: String,
    /// `up`, `down` (by the tiers' rank at the end) or `new`.
    pub direction: &'static str,
    pub members: u64,
}

#[derive(Debug, Serialize)]
pub struct TierLine {
    /// Tier id; empty for members without a tier.
    pub tier: String,
    pub members: u64,
    pub points: i64,
    pub points_value: Decimal,
}

#[derive(Debug, Serialize)]
pub struct ExpiryLine {
    /// `YYYY-MM` in the merchant's time zone, or `never`.
    pub month: String,
    pub points: i64,
    pub points_value: Decimal,
}

#[derive(Debug, Serialize)]
pub struct ActivityLine {
    pub wallet: Wallet,
    pub kind: EntryKind,
    /// The rule or promotion (`promotion:<id>`), empty for none (manual adjustments…).
    pub rule: String,
    pub entries: u64,
    /// Signed: points, or credit in the currency.
    pub amount: Decimal,
}

/// Builds the report from the recovered state and the log's entries.
pub fn build(
    ledger: &Ledger,
    log: &CommandLog,
    merchant: Option<&str>,
    period: Period,
) -> Result<Report, LogError> {
    let mut merchants: Vec<MerchantReport> = ledger
        .merchants()
        .filter(|m| merchant.is_none_or(|name| &*m.name == name))
        .map(balances)
        .collect();
    let mut activity: BTreeMap<(String, Wallet, EntryKind, String), (u64, i64)> = BTreeMap::new();
    log.scan_entries(|entry| {
        let at = chrono::DateTime::from_timestamp_micros(entry.at_micros);
        if at.is_some_and(|at| period.contains(at)) {
            let line = activity.entry(activity_key(entry)).or_default();
            line.0 += 1;
            line.1 += entry.amount;
        }
    })?;
    for report in &mut merchants {
        let minor_units = ledger
            .merchant(&report.merchant)
            .map_or(2, |m| m.program().minor_units);
        let lines = activity
            .iter()
            .filter(|((merchant, ..), _)| *merchant == report.merchant);
        for ((_, wallet, kind, rule), (entries, amount)) in lines {
            if (*wallet, *kind) == (Wallet::Points, EntryKind::Expiry) {
                report.breakage_points -= amount;
            }
            let amount = match wallet {
                Wallet::Points => Decimal::from(*amount),
                Wallet::Credit => from_minor(*amount, minor_units),
            };
            report.activity.push(ActivityLine {
                wallet: *wallet,
                kind: *kind,
                rule: rule.clone(),
                entries: *entries,
                amount,
            });
        }
    }
    Ok(Report {
        log_position: log.batches().checked_sub(1),
        period,
        merchants,
    })
}

fn activity_key(entry: &LoggedEntry) -> (String, Wallet, EntryKind, String) {
    let rule = entry.rule.clone().unwrap_or_default();
    (entry.merchant.clone(), entry.wallet, entry.kind, rule)
}

/// Liability and tier distribution of one merchant, from its members and their lots.
fn balances(merchant: &Merchant) -> MerchantReport {
    let program = merchant.program();
    let value = |points| {
        from_minor(
            points_value_minor(points, program.point_value_micro, program.minor_units),
            program.minor_units,
        )
    };
    let mut by_tier: BTreeMap<Option<usize>, (u64, i64)> = BTreeMap::new();
    let mut by_month: BTreeMap<Option<(i32, u32)>, i64> = BTreeMap::new();
    let (mut points, mut credit_minor) = (0i64, 0i64);
    for member in &merchant.members {
        let tier = by_tier.entry(member.tier).or_default();
        tier.0 += 1;
        tier.1 += member.points;
        points += member.points;
        credit_minor += member.credit_minor;
        for lot in &member.lots {
            let month = lot.expires_at.map(|at| {
                let local = at.with_timezone(&program.zone);
                (local.year(), local.month())
            });
            *by_month.entry(month).or_default() += lot.remaining;
        }
    }
    MerchantReport {
        merchant: merchant.name.to_string(),
        currency: program.currency.clone(),
        as_of: merchant.clock,
        members: merchant.members.len() as u64,
        points_outstanding: points,
        points_value: value(points),
        credit_outstanding: from_minor(credit_minor, program.minor_units),
        by_tier: by_tier
            .into_iter()
            .map(|(tier, (members, points))| TierLine {
                tier: program
                    .tier_id(tier)
                    .map_or(String::new(), |t| t.to_string()),
                members,
                points,
                points_value: value(points),
            })
            .collect(),
        by_expiry_month: expiry_lines(by_month, &value),
        activity: Vec::new(),
        breakage_points: 0,
        tier_movements: None,
    }
}

/// Tier movements of every merchant between two states of the ledger (at the period's start
/// and end): for each member at the end whose tier differs, its pair, counted.
pub fn add_tier_movements(report: &mut Report, start: &Ledger, end: &Ledger) {
    for line in &mut report.merchants {
        let Some(after) = end.merchant(&line.merchant) else {
            continue;
        };
        let before = start.merchant(&line.merchant);
        line.tier_movements = Some(tier_movements(before, after));
    }
}

fn tier_movements(before: Option<&Merchant>, after: &Merchant) -> Vec<MovementLine> {
    let program = after.program();
    let rank = |id: &Option<Name>| {
        id.as_ref()
            .and_then(|id| program.tiers.iter().position(|t| t.id == *id))
    };
    let mut pairs: BTreeMap<(String, String, &'static str), u64> = BTreeMap::new();
    for (index, member) in after.members.iter().enumerate() {
        let to = program.tier_id(member.tier);
        let from = before.and_then(|b| Some((b, b.members.get(index)?)));
        let (from_name, direction) = match from {
            None => ("new".to_string(), "new"),
            Some((merchant, old)) => {
                let from = merchant.program().tier_id(old.tier);
                if from == to {
                    continue;
                }
                let direction = if rank(&from) < rank(&to) {
                    "up"
                } else {
                    "down"
                };
                (from.map_or(String::new(), |t| t.to_string()), direction)
            }
        };
        let to_name = to.map_or(String::new(), |t| t.to_string());
        *pairs.entry((from_name, to_name, direction)).or_default() += 1;
    }
    pairs
        .into_iter()
        .map(|((from, to, direction), members)| MovementLine {
            from,
            to,
            direction,
            members,
        })
        .collect()
}

/// By month of expiry, earliest first; points that never expire last.
fn expiry_lines(
    by_month: BTreeMap<Option<(i32, u32)>, i64>,
    value: &impl Fn(i64) -> Decimal,
) -> Vec<ExpiryLine> {
    let line = |month: Option<(i32, u32)>, points: i64| ExpiryLine {
        month: month.map_or("never".into(), |(y, m)| format!("{y:04}-{m:02}")),
        points,
        points_value: value(points),
    };
    let never = by_month.get(&None).copied();
    by_month
        .into_iter()
        .filter(|(month, _)| month.is_some())
        .map(|(month, points)| line(month, points))
        .chain(never.map(|points| line(None, points)))
        .collect()
}

/// Flat rows for spreadsheets: `section,merchant,key,kind,entries,points,amount`.
pub fn to_csv(report: &Report) -> String {
    let mut out = String::from("section,merchant,key,kind,count,points,amount\n");
    for m in &report.merchants {
        let mut row =
            |section: &str, key: &str, kind: &str, count: u64, points: String, amount: String| {
                let _ = writeln!(
                    out,
                    "{section},{},{key},{kind},{count},{points},{amount}",
                    m.merchant
                );
            };
        row(
            "total",
            "points",
            "",
            m.members,
            m.points_outstanding.to_string(),
            m.points_value.to_string(),
        );
        row(
            "total",
            "credit",
            "",
            m.members,
            String::new(),
            m.credit_outstanding.to_string(),
        );
        for t in &m.by_tier {
            row(
                "tier",
                &t.tier,
                "",
                t.members,
                t.points.to_string(),
                t.points_value.to_string(),
            );
        }
        for e in &m.by_expiry_month {
            row(
                "expiry",
                &e.month,
                "",
                0,
                e.points.to_string(),
                e.points_value.to_string(),
            );
        }
        for a in &m.activity {
            let kind = format!("{}:{}", a.wallet.name(), a.kind.name());
            let (points, amount) = match a.wallet {
                Wallet::Points => (a.amount.to_string(), String::new()),
                Wallet::Credit => (String::new(), a.amount.to_string()),
            };
            row("activity", &a.rule, &kind, a.entries, points, amount);
        }
        for movement in m.tier_movements.iter().flatten() {
            let pair = format!("{}>{}", movement.from, movement.to);
            row(
                "tier_movement",
                &pair,
                movement.direction,
                movement.members,
                String::new(),
                String::new(),
            );
        }
        row(
            "breakage",
            "expired",
            "",
            0,
            m.breakage_points.to_string(),
            String::new(),
        );
    }
    out
}

/// A self-contained page: tables, and bar charts (inline SVG) of liability by expiry month
/// and by tier.
pub fn to_html(report: &Report) -> String {
    let mut page = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>tally report</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}th{background:#eee}\
         td:first-child{text-align:left}</style></head><body>",
    );
    let position = crate::log::position_text(report.log_position);
    let _ = write!(page, "<h1>tally report</h1><p>As of {position}.</p>");
    for m in &report.merchants {
        let _ = write!(
            page,
            "<h2>{}</h2><p>{} members; {} points outstanding worth {} {}; store credit {} {}; \
             {} points expired in the period.</p>",
            escape(&m.merchant),
            m.members,
            m.points_outstanding,
            m.points_value,
            escape(&m.currency),
            m.credit_outstanding,
            escape(&m.currency),
            m.breakage_points
        );
        page.push_str("<h3>Liability by month of expiry</h3>");
        let bars: Vec<(String, i64)> = m
            .by_expiry_month
            .iter()
            .map(|e| (e.month.clone(), e.points))
            .collect();
        page.push_str(&bar_chart(&bars));
        page.push_str("<h3>Tiers</h3>");
        let bars: Vec<(String, i64)> = m
            .by_tier
            .iter()
            .map(|t| {
                (
                    if t.tier.is_empty() {
                        "(none)".into()
                    } else {
                        t.tier.clone()
                    },
                    t.members as i64,
                )
            })
            .collect();
        page.push_str(&bar_chart(&bars));
        page.push_str("<table><tr><th>tier</th><th>members</th><th>points</th><th>value</th></tr>");
        for t in &m.by_tier {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&t.tier),
                t.members,
                t.points,
                t.points_value
            );
        }
        page.push_str("</table>");
        if let Some(movements) = &m.tier_movements {
            page.push_str("<h3>Tier movements in the period</h3>");
            page.push_str(
                "<table><tr><th>from</th><th>to</th><th>direction</th><th>members</th></tr>",
            );
            for movement in movements {
                let _ = write!(
                    page,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&movement.from),
                    escape(&movement.to),
                    movement.direction,
                    movement.members
                );
            }
            page.push_str("</table>");
        }
        page.push_str("<h3>Activity in the period</h3>");
        page.push_str("<table><tr><th>rule or promotion</th><th>wallet</th><th>kind</th><th>entries</th><th>amount</th></tr>");
        for a in &m.activity {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&a.rule),
                a.wallet.name(),
                a.kind.name(),
                a.entries,
                a.amount
            );
        }
        page.push_str("</table>");
    }
    page.push_str("</body></html>\n");
    page
}

/// Horizontal bars scaled to the largest value; negative values drawn as zero.
fn bar_chart(bars: &[(String, i64)]) -> String {
    const ROW_PX: usize = 22;
    const WIDTH_PX: i64 = 400;
    let largest = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{}\">",
        bars.len() * ROW_PX + 4
    );
    for (row, (label, value)) in bars.iter().enumerate() {
        let y = row * ROW_PX;
        let width = value.max(&0) * WIDTH_PX / largest;
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"13\">{}</text>\
             <rect x=\"120\" y=\"{}\" width=\"{width}\" height=\"16\" fill=\"#4a7ab7\"/>\
             <text x=\"{}\" y=\"{}\" font-size=\"12\">{value}</text>",
            y + 15,
            escape(label),
            y + 2,
            126 + width,
            y + 15
        );
    }
    svg.push_str("</svg>");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
