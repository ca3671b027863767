//! Results written as JSON by hand: byte for byte what their derived `Serialize` writes
//! (tests compare the two on every kind of result), for a third of the work.
//!
//! Why by hand: a bulk import writes every result, about 1.3 KB of JSON each, on a thread
//! that shares the machine's two cores with the engine. Through the derive, every field is a
//! trait call that checks its key, and a result's status is a flattened, internally tagged
//! enum, which serde writes through a map. Here each key is a constant with its quotes,
//! colon and comma, and a field left out is one test. A statement's page and a tick's
//! summary, rare in bulk, still go through `Serialize`.

use rust_decimal::Decimal;

use crate::decimal_text::write_quoted as write_decimal;
use crate::json_writer::{write_escaped, write_integer, write_json};
use crate::result::{
    Applied, Balances, CommandResult, Discount, EntryView, LineEarning, LotSlice, MemberView,
    PromotionApplied, PromotionLine, PromotionNotApplied, PunchCard, RuleEarning, Status,
    TierChange,
};
use crate::Name;

/// Appends `result`'s JSON to `out`.
pub(crate) fn write_result(out: &mut Vec<u8>, result: &CommandResult) {
    out.extend_from_slice(b"{\"merchant\":");
    write_escaped(out, &result.merchant);
    out.extend_from_slice(b",\"key\":");
    write_escaped(out, &result.key);
    out.extend_from_slice(b",\"command\":");
    write_name(out, result.command.name());
    match &result.status {
        Status::Applied(applied) => {
            out.extend_from_slice(b",\"status\":\"applied\"");
            write_applied_fields(out, applied);
        }
        Status::Duplicate { first } => {
            out.extend_from_slice(b",\"status\":\"duplicate\",\"first\":");
            write_result(out, first);
        }
        Status::Rejected { reason, message } => {
            out.extend_from_slice(b",\"status\":\"rejected\",\"reason\":");
            write_name(out, reason.code());
            out.extend_from_slice(b",\"message\":");
            write_escaped(out, message);
        }
    }
    out.push(b'}');
}

/// A field of an object that has one before it: `,"key":` and its value.
macro_rules! field {
    ($out:expr, $key:literal, $write:expr) => {{
        $out.extend_from_slice(concat!(",\"", $key, "\":").as_bytes());
        $write;
    }};
}

/// The first field of an object: `{"key":` and its value.
macro_rules! first_field {
    ($out:expr, $key:literal, $write:expr) => {{
        $out.extend_from_slice(concat!("{\"", $key, "\":").as_bytes());
        $write;
    }};
}

/// An applied result's fields, in declaration order, each left out where its `serde`
/// attribute leaves it out.
fn write_applied_fields(out: &mut Vec<u8>, applied: &Applied) {
    field!(
        out,
        "program_version",
        write_integer(out, applied.program_version)
    );
    if let Some(member) = &applied.member {
        field!(out, "member", write_member(out, member));
    }
    write_nonzero(out, ",\"points_earned\":", applied.points_earned);
    write_nonzero(out, ",\"points_redeemed\":", applied.points_redeemed);
    write_nonzero_decimal(out, ",\"credit_redeemed\":", &applied.credit_redeemed);
    write_nonzero_decimal(out, ",\"cashback\":", &applied.cashback);
    write_list(out, ",\"rules\":", &applied.rules, write_rule);
    write_list(out, ",\"lines\":", &applied.lines, write_line);
    write_list(out, ",\"discounts\":", &applied.discounts, write_discount);
    write_nonzero(out, ",\"points_written_off\":", applied.points_written_off);
    write_nonzero_decimal(out, ",\"credit_written_off\":", &applied.credit_written_off);
    write_list(out, ",\"entries\":", &applied.entries, write_entry);
    if let Some(balances) = &applied.balances {
        field!(out, "balances", write_balances(out, balances));
    }
    if let Some(tier) = &applied.tier {
        field!(out, "tier", write_tier(out, tier));
    }
    write_list(out, ",\"cards\":", &applied.cards, |out, card| {
        write_escaped(out, card)
    });
    if let Some(tick) = &applied.tick {
        field!(out, "tick", write_serialized(out, tick));
    }
    if let Some(statement) = &applied.statement {
        field!(out, "statement", write_serialized(out, statement));
    }
    write_list(
        out,
        ",\"promotions\":",
        &applied.promotions,
        write_promotion,
    );
    write_list(
        out,
        ",\"promotions_not_applied\":",
        &applied.promotions_not_applied,
        write_promotion_not_applied,
    );
    write_list(
        out,
        ",\"punch_cards\":",
        &applied.punch_cards,
        write_punch_card,
    );
    write_list(out, ",\"codes\":", &applied.codes, |out, code| {
        write_escaped(out, code)
    });
}

fn write_member(out: &mut Vec<u8>, member: &MemberView) {
    first_field!(out, "id", write_integer(out, member.id));
    if member.enrolled {
        field!(out, "enrolled", out.extend_from_slice(b"true"));
    }
    out.push(b'}');
}

fn write_rule(out: &mut Vec<u8>, rule: &RuleEarning) {
    first_field!(out, "rule", write_escaped(out, &rule.rule));
    write_nonzero(out, ",\"points\":", rule.points);
    write_nonzero_decimal(out, ",\"cashback\":", &rule.cashback);
    out.push(b'}');
}

fn write_line(out: &mut Vec<u8>, line: &LineEarning) {
    first_field!(out, "sku", write_escaped(out, &line.sku));
    field!(out, "eligible", write_decimal(out, &line.eligible));
    field!(out, "points", write_integer(out, line.points));
    write_nonzero_decimal(out, ",\"cashback\":", &line.cashback);
    out.push(b'}');
}

fn write_discount(out: &mut Vec<u8>, discount: &Discount) {
    first_field!(out, "reward", write_escaped(out, &discount.reward));
    field!(out, "amount", write_decimal(out, &discount.amount));
    field!(out, "points", write_integer(out, discount.points));
    out.push(b'}');
}

fn write_entry(out: &mut Vec<u8>, entry: &EntryView) {
    first_field!(out, "wallet", write_name(out, entry.wallet.name()));
    field!(out, "kind", write_name(out, entry.kind.name()));
    field!(out, "amount", write_decimal(out, &entry.amount));
    if let Some(rule) = &entry.rule {
        field!(out, "rule", write_escaped(out, rule));
    }
    write_list(out, ",\"lots\":", &entry.lots, write_lot);
    out.push(b'}');
}

fn write_lot(out: &mut Vec<u8>, lot: &LotSlice) {
    first_field!(out, "lot", write_integer(out, lot.lot));
    field!(out, "points", write_integer(out, lot.points));
    out.push(b'}');
}

fn write_balances(out: &mut Vec<u8>, balances: &Balances) {
    first_field!(out, "points", write_integer(out, balances.points));
    field!(out, "available", write_integer(out, balances.available));
    field!(out, "pending", write_integer(out, balances.pending));
    field!(out, "held", write_integer(out, balances.held));
    field!(out, "credit", write_decimal(out, &balances.credit));
    field!(
        out,
        "credit_held",
        write_decimal(out, &balances.credit_held)
    );
    out.push(b'}');
}

fn write_tier(out: &mut Vec<u8>, tier: &TierChange) {
    first_field!(
        out,
        "before",
        write_optional_name(out, tier.before.as_ref())
    );
    field!(out, "after", write_optional_name(out, tier.after.as_ref()));
    out.push(b'}');
}

fn write_promotion(out: &mut Vec<u8>, promotion: &PromotionApplied) {
    first_field!(out, "promotion", write_escaped(out, &promotion.promotion));
    if let Some(case) = promotion.case {
        field!(out, "case", write_integer(out, case));
    }
    if let Some(code) = &promotion.code {
        field!(out, "code", write_escaped(out, code));
    }
    write_list(out, ",\"lines\":", &promotion.lines, write_promotion_line);
    write_nonzero_decimal(out, ",\"shipping\":", &promotion.shipping);
    write_nonzero_decimal(out, ",\"discount\":", &promotion.discount);
    write_nonzero(out, ",\"points\":", promotion.points);
    write_list(out, ",\"gifts\":", &promotion.gifts, |out, gift: &Name| {
        write_escaped(out, gift)
    });
    write_nonzero(out, ",\"punch\":", promotion.punch);
    if promotion.code_returned {
        field!(out, "code_returned", out.extend_from_slice(b"true"));
    }
    out.push(b'}');
}

fn write_promotion_line(out: &mut Vec<u8>, line: &PromotionLine) {
    first_field!(out, "line", write_integer(out, line.line));
    field!(out, "sku", write_escaped(out, &line.sku));
    field!(out, "amount", write_decimal(out, &line.amount));
    out.push(b'}');
}

fn write_promotion_not_applied(out: &mut Vec<u8>, not_applied: &PromotionNotApplied) {
    first_field!(out, "promotion", write_escaped(out, &not_applied.promotion));
    field!(out, "reason", write_name(out, not_applied.reason.code()));
    if let Some(condition) = &not_applied.condition {
        field!(out, "condition", write_escaped(out, condition));
    }
    if let Some(code) = &not_applied.code {
        field!(out, "code", write_escaped(out, code));
    }
    out.push(b'}');
}

fn write_punch_card(out: &mut Vec<u8>, card: &PunchCard) {
    first_field!(out, "promotion", write_escaped(out, &card.promotion));
    field!(out, "punches", write_integer(out, card.punches));
    field!(out, "of", write_integer(out, card.of));
    if card.completed {
        field!(out, "completed", out.extend_from_slice(b"true"));
    }
    out.push(b'}');
}

/// `key` (with its comma and colon) and an array of `items`, unless there are none.
fn write_list<T>(
    out: &mut Vec<u8>,
    key: &str,
    items: &[T],
    mut write_item: impl FnMut(&mut Vec<u8>, &T),
) {
    let Some((first, rest)) = items.split_first() else {
        return;
    };
    out.extend_from_slice(key.as_bytes());
    out.push(b'[');
    write_item(out, first);
    for item in rest {
        out.push(b',');
        write_item(out, item);
    }
    out.push(b']');
}

fn write_nonzero(out: &mut Vec<u8>, key: &str, value: i64) {
    if value != 0 {
        out.extend_from_slice(key.as_bytes());
        write_integer(out, value);
    }
}

fn write_nonzero_decimal(out: &mut Vec<u8>, key: &str, value: &Decimal) {
    if !value.is_zero() {
        out.extend_from_slice(key.as_bytes());
        write_decimal(out, value);
    }
}

/// A name of the vocabulary (a kind, a reason, a wallet): plain lowercase ASCII.
fn write_name(out: &mut Vec<u8>, name: &str) {
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.push(b'"');
}

fn write_optional_name(out: &mut Vec<u8>, name: Option<&Name>) {
    match name {
        Some(name) => write_escaped(out, name),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_serialized(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    write_json(out, value).expect("results always serialise");
}

#[cfg(test)]
mod tests {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use smallvec::SmallVec;

    use super::*;
    use crate::command::CommandKind;
    use crate::result::{EntryKind, StatementEntry, StatementPage, TickSummary, Wallet};
    use crate::Reason;

    /// The bytes the derived `Serialize` gives, through `serde_json` itself.
    fn assert_as_serde_writes(result: &CommandResult) {
        let mut ours = Vec::new();
        write_result(&mut ours, result);
        let theirs = serde_json::to_string(result).expect("serialises");
        assert_eq!(String::from_utf8(ours).expect("UTF-8"), theirs);
    }

    const KINDS: [CommandKind; 21] = [
        CommandKind::Purchase,
        CommandKind::Quote,
        CommandKind::Return,
        CommandKind::Hold,
        CommandKind::Capture,
        CommandKind::Release,
        CommandKind::Adjust,
        CommandKind::Event,
        CommandKind::Enroll,
        CommandKind::IssueCards,
        CommandKind::Link,
        CommandKind::LoadProgram,
        CommandKind::Tick,
        CommandKind::Statement,
        CommandKind::AssignPromotion,
        CommandKind::IssueCodes,
        CommandKind::Tag,
        CommandKind::Unknown,
        CommandKind::Balance,
        CommandKind::Snapshot,
        CommandKind::Purchase,
    ];
    const WALLETS: [Wallet; 2] = [Wallet::Points, Wallet::Credit];
    const ENTRY_KINDS: [EntryKind; 9] = [
        EntryKind::Accrual,
        EntryKind::Redemption,
        EntryKind::Reversal,
        EntryKind::Expiry,
        EntryKind::Adjustment,
        EntryKind::Bonus,
        EntryKind::Hold,
        EntryKind::Release,
        EntryKind::Cashback,
    ];

    #[test]
    fn vocabulary_names_are_those_serde_writes() {
        let quoted = |name: &str| format!("\"{name}\"");
        for kind in KINDS {
            assert_eq!(serde_json::to_string(&kind).unwrap(), quoted(kind.name()));
        }
        for wallet in WALLETS {
            assert_eq!(
                serde_json::to_string(&wallet).unwrap(),
                quoted(wallet.name())
            );
        }
        for kind in ENTRY_KINDS {
            assert_eq!(serde_json::to_string(&kind).unwrap(), quoted(kind.name()));
        }
        for reason in Reason::ALL {
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                quoted(reason.code())
            );
        }
    }

    /// Text that needs escaping now and then: quotes, backslashes, control bytes, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9 \"\\\\\n\t\u{1}é€/:-]{0,12}"
    }

    fn name() -> impl Strategy<Value = Name> {
        text().prop_map(|text| Name::new(&text))
    }

    /// Amounts of every shape: zero, negative, many places, and mantissas past 64 bits.
    fn decimal() -> impl Strategy<Value = Decimal> {
        prop_oneof![
            Just(Decimal::ZERO),
            (any::<i64>(), 0u32..8).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale)),
            (any::<i128>(), 0u32..29).prop_map(|(mantissa, scale)| {
                Decimal::from_i128_with_scale(
                    mantissa % 79_228_162_514_264_337_593_543_950_335,
                    scale,
                )
            }),
        ]
    }

    /// Zero half the time: most fields are left out when zero.
    fn points() -> impl Strategy<Value = i64> {
        prop_oneof![Just(0), any::<i64>()]
    }

    fn short<T: std::fmt::Debug>(item: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
        vec(item, 0..3)
    }

    fn entry() -> impl Strategy<Value = EntryView> {
        (
            proptest::sample::select(WALLETS.to_vec()),
            proptest::sample::select(ENTRY_KINDS.to_vec()),
            decimal(),
            proptest::option::of(name()),
            short((any::<u32>(), points()).prop_map(|(lot, points)| LotSlice { lot, points })),
        )
            .prop_map(|(wallet, kind, amount, rule, lots)| EntryView {
                wallet,
                kind,
                amount,
                rule,
                lots: SmallVec::from_vec(lots),
            })
    }

    fn promotion() -> impl Strategy<Value = PromotionApplied> {
        let line = (any::<u32>(), name(), decimal())
            .prop_map(|(line, sku, amount)| PromotionLine { line, sku, amount });
        (
            (
                name(),
                proptest::option::of(any::<u32>()),
                proptest::option::of(text()),
            ),
            (short(line), decimal(), decimal(), points()),
            (short(name()), points(), any::<bool>()),
        )
            .prop_map(
                |(
                    (promotion, case, code),
                    (lines, shipping, discount, points),
                    (gifts, punch, code_returned),
                )| {
                    PromotionApplied {
                        promotion,
                        case,
                        code,
                        lines,
                        shipping,
                        discount,
                        points,
                        gifts,
                        punch,
                        code_returned,
                    }
                },
            )
    }

    fn statement() -> impl Strategy<Value = StatementPage> {
        let entry =
            (any::<u64>(), entry(), text()).prop_map(|(seq, entry, command)| StatementEntry {
                seq,
                at: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
                command,
                wallet: entry.wallet,
                kind: entry.kind,
                amount: entry.amount,
                rule: entry.rule,
                program_version: 3,
                lots: entry.lots,
            });
        (any::<u32>(), short(entry)).prop_map(|(page, entries)| StatementPage {
            page,
            per_page: 50,
            total_entries: entries.len() as u64,
            entries,
        })
    }

    /// Every field of `Applied`, each present or left out at random.
    fn applied() -> impl Strategy<Value = Applied> {
        let rule = (name(), points(), decimal()).prop_map(|(rule, points, cashback)| RuleEarning {
            rule,
            points,
            cashback,
        });
        let line = (name(), decimal(), points(), decimal()).prop_map(
            |(sku, eligible, points, cashback)| LineEarning {
                sku,
                eligible,
                points,
                cashback,
            },
        );
        let discount =
            (text(), decimal(), points()).prop_map(|(reward, amount, points)| Discount {
                reward,
                amount,
                points,
            });
        let member =
            (any::<u64>(), any::<bool>()).prop_map(|(id, enrolled)| MemberView { id, enrolled });
        let balances = (points(), points(), points(), points(), decimal(), decimal()).prop_map(
            |(points, available, pending, held, credit, credit_held)| Balances {
                points,
                available,
                pending,
                held,
                credit,
                credit_held,
            },
        );
        let tier = (proptest::option::of(name()), proptest::option::of(name()))
            .prop_map(|(before, after)| TierChange { before, after });
        let tick = (any::<u64>(), points(), points()).prop_map(|(members, expired, released)| {
            TickSummary {
                members,
                points_expired: expired,
                points_released: released,
                holds_lapsed: 1,
                birthday_bonuses: 2,
                tier_changes: 0,
            }
        });
        let not_applied = (
            name(),
            proptest::sample::select(Reason::ALL.to_vec()),
            proptest::option::of(name()),
            proptest::option::of(text()),
        )
            .prop_map(|(promotion, reason, condition, code)| PromotionNotApplied {
                promotion,
                reason,
                condition,
                code,
            });
        let punch_card = (name(), any::<u32>(), any::<u32>(), any::<bool>()).prop_map(
            |(promotion, punches, of, completed)| PunchCard {
                promotion,
                punches,
                of,
                completed,
            },
        );
        (
            (
                any::<u32>(),
                proptest::option::of(member),
                points(),
                points(),
                decimal(),
                decimal(),
            ),
            (
                short(rule),
                short(line),
                short(discount),
                points(),
                decimal(),
                short(entry()),
            ),
            (
                proptest::option::of(balances),
                proptest::option::of(tier),
                short(text()),
            ),
            (
                proptest::option::of(tick),
                proptest::option::of(statement()),
            ),
            (
                short(promotion()),
                short(not_applied),
                short(punch_card),
                short(text()),
            ),
        )
            .prop_map(|(head, lists, state, queries, promotions)| {
                let (
                    program_version,
                    member,
                    points_earned,
                    points_redeemed,
                    credit_redeemed,
                    cashback,
                ) = head;
                let (rules, lines, discounts, points_written_off, credit_written_off, entries) =
                    lists;
                let (balances, tier, cards) = state;
                let (tick, statement) = queries;
                let (promotions, promotions_not_applied, punch_cards, codes) = promotions;
                Applied {
                    program_version,
                    member,
                    points_earned,
                    points_redeemed,
                    credit_redeemed,
                    cashback,
                    rules,
                    lines,
                    discounts,
                    points_written_off,
                    credit_written_off,
                    entries,
                    balances,
                    tier,
                    cards,
                    tick,
                    statement,
                    promotions,
                    promotions_not_applied,
                    punch_cards,
                    codes,
                }
            })
    }

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            applied().prop_map(|applied| Status::Applied(Box::new(applied))),
            (proptest::sample::select(Reason::ALL.to_vec()), text())
                .prop_map(|(reason, message)| Status::Rejected { reason, message }),
        ]
    }

    fn plain_result() -> impl Strategy<Value = CommandResult> {
        (
            text(),
            text(),
            proptest::sample::select(KINDS.to_vec()),
            status(),
        )
            .prop_map(|(merchant, key, command, status)| CommandResult {
                merchant,
                key,
                command,
                status,
            })
    }

    fn result() -> impl Strategy<Value = CommandResult> {
        (plain_result(), any::<bool>(), plain_result()).prop_map(|(result, duplicate, first)| {
            match duplicate {
                true => CommandResult {
                    status: Status::Duplicate {
                        first: Box::new(first),
                    },
                    ..result
                },
                false => result,
            }
        })
    }

    proptest! {
        #[test]
        fn every_result_is_written_as_serde_writes_it(result in result()) {
            assert_as_serde_writes(&result);
        }
    }

    #[test]
    fn an_empty_applied_result_and_a_rejection_are_written_as_serde_writes_them() {
        let applied = CommandResult {
            merchant: "caf\u{e9} \"north\"".into(),
            key: "pos-1/42".into(),
            command: CommandKind::Purchase,
            status: Status::Applied(Box::default()),
        };
        assert_as_serde_writes(&applied);
        let rejected = CommandResult::rejected(
            "cafe",
            "pos-1/43".into(),
            CommandKind::Return,
            Reason::Conflict,
            "the key was used\nfor another order".into(),
        );
        assert_as_serde_writes(&rejected);
    }
}
