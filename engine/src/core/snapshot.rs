//! One member as a balance snapshot shows it: read-only, from the state alone.

use chrono::TimeDelta;
use tally_protocol::Alias;

use super::member::{Member, Totals};
use super::time::month_index;
use super::{tiers, Ledger, Merchant};
use crate::program::{Program, Window};
use crate::Timestamp;

/// Days ahead for which a snapshot sums the points about to expire.
pub const EXPIRING_WITHIN_DAYS: [i64; 3] = [30, 60, 90];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSnapshot {
    pub merchant: String,
    pub member: u64,
    /// Phones as E.164, cards as `card:<number>`, joined by `;`.
    pub aliases: String,
    pub points: i64,
    pub available: i64,
    pub pending: i64,
    pub held: i64,
    pub credit_minor: i64,
    pub credit_held_minor: i64,
    pub minor_units: u32,
    pub tier: Option<String>,
    /// Totals over the window of the member's tier (the lowest tier's when it has none).
    pub window: Totals,
    /// Points in lots that expire within 30, 60 and 90 days of the merchant's clock.
    pub expiring: [i64; 3],
}

impl Ledger {
    /// Every member of every merchant (or of one), by merchant and member id, as of the
    /// last applied command.
    pub fn snapshot<'a>(
        &'a self,
        merchant: Option<&'a str>,
    ) -> impl Iterator<Item = MemberSnapshot> + 'a {
        self.merchants()
            .filter(move |m| merchant.is_none_or(|name| &*m.name == name))
            .flat_map(|m| {
                m.members
                    .iter()
                    .map(move |member| member_snapshot(m, member))
            })
    }
}

fn member_snapshot(merchant: &Merchant, member: &Member) -> MemberSnapshot {
    let program = merchant.program();
    let aliases: Vec<String> = member
        .aliases
        .iter()
        .map(|alias| match alias {
            Alias::Phone(phone) => phone.clone(),
            Alias::Card(card) => format!("card:{card}"),
        })
        .collect();
    MemberSnapshot {
        merchant: merchant.name.to_string(),
        member: member.id,
        aliases: aliases.join(";"),
        points: member.points,
        available: member.available_points(),
        pending: member.pending_points,
        held: member.held_points,
        credit_minor: member.credit_minor,
        credit_held_minor: member.held_credit_minor,
        minor_units: program.minor_units,
        tier: program.tier_id(member.tier).map(|id| id.to_string()),
        window: window_totals(program, member, merchant.clock),
        expiring: expiring(member, merchant.clock),
    }
}

fn window_totals(program: &Program, member: &Member, now: Timestamp) -> Totals {
    let window = member
        .tier
        .or((!program.tiers.is_empty()).then_some(0))
        .map_or(Window::Lifetime, |index| program.tiers[index].window);
    tiers::window_totals(&member.counters, window, month_index(program, now))
}

/// Lots are kept earliest expiry first, so the scan stops at the first lot past 90 days.
fn expiring(member: &Member, now: Timestamp) -> [i64; 3] {
    let limits = EXPIRING_WITHIN_DAYS.map(|days| now + TimeDelta::days(days));
    let mut sums = [0; 3];
    for lot in &member.lots {
        let Some(expires_at) = lot.expires_at.filter(|at| *at <= limits[2]) else {
            break;
        };
        for (sum, limit) in sums.iter_mut().zip(limits) {
            if expires_at <= limit {
                *sum += lot.remaining;
            }
        }
    }
    sums
}
