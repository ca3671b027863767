//! Property tests of promotions over random programs and orders.
//!
//! A program with one promotion of each kind and action, its rates and budgets drawn at
//! random, meets random orders from a few members: baskets with coffee, muffins and mugs,
//! sometimes shipping, some codes (a code promotion's, issued scratch codes, unknown ones),
//! and partial returns. After every command:
//! - the discounts of an order never exceed it: per line at most the line, in all at most
//!   the lines and the shipping;
//! - budgets are never overspent: what the results say each promotion gave (uses, points,
//!   money off) stays within its budget (partial returns give nothing back to a budget);
//! - a quote just before a purchase predicts its promotions exactly;
//! - the books balance (`Ledger::verify`; debug builds also recount every member's lots).

use std::collections::HashMap;

use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use tally_engine::replay::Replayer;
use tally_protocol::CommandResult;

#[derive(Debug, Clone)]
struct Budgets {
    percent: u32,
    amount_minor: i64,
    uses: u64,
    points: i64,
    fixed_minor: i64,
    card_amount_minor: i64,
}

fn budgets() -> impl Strategy<Value = Budgets> {
    (
        0u32..=100,
        1i64..5_000,
        1u64..6,
        1i64..300,
        1i64..3_000,
        1i64..2_000,
    )
        .prop_map(
            |(percent, amount_minor, uses, points, fixed_minor, card_amount_minor)| Budgets {
                percent,
                amount_minor,
                uses,
                points,
                fixed_minor,
                card_amount_minor,
            },
        )
}

fn money(minor: i64) -> String {
    Decimal::new(minor, 2).to_string()
}

fn program(b: &Budgets) -> String {
    format!(
        r#"merchant = "p"
version = 1
currency = "USD"
time_zone = "UTC"
point_value = "0.01"

[[rules]]
id = "base"
kind = "per_amount"
points = 1

[[promotions]]
id = "pct"
kind = "benefit"
title = "Percent off coffee"
budget = {{ amount = "{amount}" }}
[[promotions.cases]]
conditions = {{ contains = [{{ category = "coffee" }}] }}
actions = [{{ kind = "percent_discount", percent = {percent}, categories = ["coffee"] }}]

[[promotions]]
id = "fixed"
kind = "code"
code = "FIX"
title = "Money off everything"
budget = {{ uses = {uses} }}
[[promotions.cases]]
actions = [{{ kind = "fixed_discount", amount = "{fixed}" }}, {{ kind = "award_points", points = 7 }}]

[[promotions]]
id = "free"
kind = "benefit"
title = "Two free muffins"
[[promotions.cases]]
conditions = {{ contains = [{{ sku = "MUFFIN" }}] }}
actions = [{{ kind = "free_product", sku = "MUFFIN", qty = 2 }}]

[[promotions]]
id = "mult"
kind = "benefit"
title = "Triple points"
budget = {{ points = {points} }}
[[promotions.cases]]
conditions = {{ min_total = "5.00" }}
actions = [{{ kind = "multiply_points", factor = 3 }}]

[[promotions]]
id = "ship"
kind = "code"
code = "SHIP"
title = "Free shipping"
[[promotions.cases]]
actions = [{{ kind = "free_shipping" }}]

[[promotions]]
id = "scratch"
kind = "scratch"
title = "Scratch: money off"
budget = {{ uses = {uses} }}
[[promotions.cases]]
actions = [{{ kind = "fixed_discount", amount = "{fixed}" }}]

[[promotions]]
id = "card"
kind = "punch_card"
title = "Every second mug order"
punches = 2
budget = {{ amount = "{card}" }}
[[promotions.cases]]
conditions = {{ contains = [{{ category = "merch" }}] }}
actions = [{{ kind = "punch" }}]
[[promotions.reward]]
kind = "fixed_discount"
amount = "9.99"
[[promotions.reward]]
kind = "award_points"
points = 20

[[promotions]]
id = "regular"
kind = "regular"
title = "Assigned: half off"
limit_per_member = 3
[[promotions.cases]]
actions = [{{ kind = "percent_discount", percent = 50 }}]
"#,
        amount = money(b.amount_minor),
        percent = b.percent,
        uses = b.uses,
        fixed = money(b.fixed_minor),
        points = b.points,
        card = money(b.card_amount_minor),
    )
}

#[derive(Debug, Clone)]
enum Step {
    Order {
        member: u8,
        lines: Vec<(u8, i64, i64)>,
        shipping_minor: Option<i64>,
        codes: Vec<u8>,
    },
    ReturnOne {
        order: u16,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let line = (0u8..4, 1i64..4, 0i64..2_000);
    let order = (
        0u8..5,
        prop::collection::vec(line, 1..5),
        prop::option::of(0i64..1_500),
        prop::collection::vec(0u8..8, 0..3),
    )
        .prop_map(|(member, lines, shipping_minor, codes)| Step::Order {
            member,
            lines,
            shipping_minor,
            codes,
        });
    prop_oneof![6 => order, 1 => (0u16..500).prop_map(|order| Step::ReturnOne { order })]
}

const CATALOG: [(&str, &str); 4] = [
    ("LATTE", "coffee"),
    ("MUFFIN", "pastry"),
    ("MUG", "merch"),
    ("TEA", "coffee"),
];

fn dec(value: &Value) -> Decimal {
    match value {
        Value::String(text) => text.parse().expect("a decimal"),
        Value::Null => Decimal::ZERO,
        other => other.to_string().parse().expect("a decimal"),
    }
}

fn minor(value: &Value) -> i64 {
    use rust_decimal::prelude::ToPrimitive;
    (dec(value) * Decimal::ONE_HUNDRED)
        .to_i64()
        .expect("an amount in cents")
}

struct Run {
    replayer: Replayer,
    clock: i64,
    txn: u64,
    scratch_codes: Vec<String>,
    /// Applied orders: txn, LATTE units left, units left in all.
    orders: Vec<(String, i64, i64)>,
    /// Per promotion: uses, points and money off, as the results report them.
    given: HashMap<String, (u64, i64, i64)>,
}

impl Run {
    fn send(&mut self, mut command: Value) -> Value {
        self.clock += 60;
        self.txn += 1;
        let at = chrono::DateTime::from_timestamp(1_772_400_000 + self.clock, 0).expect("time");
        command["merchant"] = json!("p");
        command["txn"] = json!(self.txn.to_string());
        command["at"] = json!(at.to_rfc3339());
        if command.get("admin").is_none() {
            command["terminal"] = json!("pos");
        }
        let mut last: Option<CommandResult> = None;
        self.replayer
            .apply_line(self.txn, &command.to_string(), &mut |r| {
                last = Some(r.clone())
            });
        serde_json::to_value(last.expect("a result")).expect("serialisable")
    }
}

fn order_body(step: &Step, scratch: &[String]) -> Value {
    let Step::Order {
        member,
        lines,
        shipping_minor,
        codes,
    } = step
    else {
        unreachable!()
    };
    let lines: Vec<Value> = lines
        .iter()
        .map(|(item, qty, price)| {
            let (sku, category) = CATALOG[*item as usize];
            json!({"sku": sku, "category": category, "qty": qty, "unit_price": money(*price)})
        })
        .collect();
    let sum: i64 = lines
        .iter()
        .map(|l| l["qty"].as_i64().unwrap() * minor(&l["unit_price"]))
        .sum();
    let mut codes: Vec<String> = codes
        .iter()
        .map(|c| match c {
            0 => "FIX".to_string(),
            1 => "SHIP".to_string(),
            7 => "NOPE-NOPE".to_string(),
            n => scratch[(*n as usize) % scratch.len()].clone(),
        })
        .collect();
    codes.sort();
    codes.dedup();
    let mut body = json!({"member": {"card": format!("M{member}")}, "lines": lines,
        "total": money(sum + shipping_minor.unwrap_or(0)), "codes": codes});
    if let Some(shipping) = shipping_minor {
        body["shipping"] = json!(money(*shipping));
    }
    body
}

fn check_order(result: &Value, body: &Value, run: &mut Run) -> Result<(), TestCaseError> {
    let lines = body["lines"].as_array().unwrap();
    let line_minor: Vec<i64> = lines
        .iter()
        .map(|l| l["qty"].as_i64().unwrap() * minor(&l["unit_price"]))
        .collect();
    let shipping = body.get("shipping").map_or(0, minor);
    let mut per_line = vec![0i64; lines.len()];
    let mut total = 0;
    let empty = Vec::new();
    for promotion in result["promotions"].as_array().unwrap_or(&empty) {
        let id = promotion["promotion"].as_str().unwrap().to_string();
        let discount = minor(&promotion["discount"]);
        let mut lines_sum = 0;
        for line in promotion["lines"].as_array().unwrap_or(&empty) {
            let l = line["line"].as_u64().unwrap() as usize - 1;
            let amount = minor(&line["amount"]);
            prop_assert!(amount > 0, "a line discount is positive: {result}");
            per_line[l] += amount;
            lines_sum += amount;
        }
        prop_assert_eq!(discount, lines_sum + minor(&promotion["shipping"]));
        total += discount;
        let given = run.given.entry(id).or_default();
        given.0 += 1;
        given.1 += promotion["points"].as_i64().unwrap_or(0);
        given.2 += discount;
    }
    for (l, (off, line)) in per_line.iter().zip(&line_minor).enumerate() {
        prop_assert!(
            off <= line,
            "line {l}: {off} off a line of {line}: {result}"
        );
    }
    prop_assert!(total <= line_minor.iter().sum::<i64>() + shipping);
    Ok(())
}

fn check_budgets(run: &Run, b: &Budgets) -> Result<(), TestCaseError> {
    let given = |id: &str| run.given.get(id).copied().unwrap_or_default();
    prop_assert!(
        given("pct").2 <= b.amount_minor,
        "pct {:?} > {}",
        given("pct"),
        b.amount_minor
    );
    prop_assert!(given("fixed").0 <= b.uses);
    prop_assert!(given("scratch").0 <= b.uses);
    prop_assert!(
        given("mult").1 <= b.points,
        "mult {:?} > {}",
        given("mult"),
        b.points
    );
    prop_assert!(given("card").2 <= b.card_amount_minor);
    prop_assert!(
        given("regular").0 <= 3 * 5,
        "three uses for each of five members"
    );
    Ok(())
}

fn drive(b: &Budgets, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut run = Run {
        replayer: Replayer::new(vec![program(b)]).expect("the program is valid"),
        clock: 0,
        txn: 0,
        scratch_codes: Vec::new(),
        orders: Vec::new(),
        given: HashMap::new(),
    };
    for member in 0..5 {
        run.send(json!({"enroll": {"card": format!("M{member}")}}));
    }
    let members: Vec<Value> = (0..5).map(|m| json!({"card": format!("M{m}")})).collect();
    let assigned = run.send(json!({"admin": "ops",
        "assign_promotion": {"promotion": "regular", "members": members}}));
    prop_assert_eq!(&assigned["status"], "applied");
    let issued = run.send(
        json!({"admin": "ops", "issue_codes": {"promotion": "scratch",
        "count": 6, "seed": "7e".repeat(32)}}),
    );
    run.scratch_codes = issued["codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    for step in steps {
        match step {
            Step::Order { .. } => {
                let body = order_body(step, &run.scratch_codes);
                let quote = run.send(json!({"quote": body}));
                let result = run.send(json!({"purchase": body}));
                prop_assert_eq!(&quote["status"], &result["status"]);
                if result["status"] == "applied" {
                    for field in [
                        "promotions",
                        "promotions_not_applied",
                        "punch_cards",
                        "rules",
                    ] {
                        prop_assert_eq!(&quote[field], &result[field], "quote and purchase differ");
                    }
                    check_order(&result, &body, &mut run)?;
                    let units = |sku: Option<&str>| -> i64 {
                        body["lines"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|l| sku.is_none_or(|s| l["sku"] == s))
                            .map(|l| l["qty"].as_i64().unwrap())
                            .sum()
                    };
                    run.orders
                        .push((run.txn.to_string(), units(Some("LATTE")), units(None)));
                } else {
                    prop_assert_eq!(&result["reason"], "code_unknown", "{}", result);
                }
            }
            Step::ReturnOne { order } if !run.orders.is_empty() => {
                let at = *order as usize % run.orders.len();
                let (txn, lattes, units) = run.orders[at].clone();
                // One latte, never the last unit: a whole return would give budgets back,
                // which this accounting of what was given does not follow.
                if lattes == 0 || units < 2 {
                    continue;
                }
                let result = run.send(json!({"return": {"order": {"txn": txn},
                    "lines": [{"sku": "LATTE", "qty": 1}]}}));
                prop_assert_eq!(&result["status"], "applied", "{}", result);
                run.orders[at] = (txn, lattes - 1, units - 1);
            }
            Step::ReturnOne { .. } => {}
        }
        check_budgets(&run, b)?;
    }
    run.replayer.finish(&mut |_| {});
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    #[test]
    fn discounts_stay_within_the_order_and_budgets_are_never_overspent(
        b in budgets(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        drive(&b, &steps)?;
    }
}
