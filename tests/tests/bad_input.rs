//! Bad input, table-driven: every malformed or impossible command line, fed through
//! `Replayer::apply_line` after a valid baseline, gets a `rejected` result with the expected
//! reason code, does not panic, and leaves the state exactly as it was; a valid command after
//! them still applies. A second check keeps the table honest: every reason code is produced
//! by some case, or is listed as not reachable offline with the reason why.

use serde_json::{json, Value};
use tally_engine::replay::Replayer;
use tally_engine::workload::DEMO_PROGRAM;
use tally_protocol::{CommandResult, Reason, Status};

/// The baseline's last event time; every bad line is sent at it, so no tick runs between them.
const AT: &str = "2026-03-02T10:00:00Z";
const EARLIER: [&str; 6] = [
    "2026-03-02T09:00:00Z",
    "2026-03-02T09:01:00Z",
    "2026-03-02T09:02:00Z",
    "2026-03-02T09:03:00Z",
    "2026-03-02T09:04:00Z",
    "2026-03-02T10:00:00Z",
];

/// Codes no command line can produce offline, and why.
const NOT_REACHABLE_OFFLINE: &[(Reason, &str)] = &[
    (
        Reason::Overloaded,
        "back-pressure of the server's bounded queues; the offline core never refuses for load",
    ),
    (
        Reason::CodeAlreadyUsed,
        "a promotion that cannot be applied is listed in the order's `promotions_not_applied` \
         with this reason; the order itself is applied",
    ),
    (
        Reason::PromotionExpired,
        "listed in `promotions_not_applied`; the order is applied",
    ),
    (
        Reason::BudgetExhausted,
        "listed in `promotions_not_applied`; the order is applied",
    ),
    (
        Reason::ConditionNotMet,
        "listed in `promotions_not_applied`; the order is applied",
    ),
    (
        Reason::PromotionLimitReached,
        "listed in `promotions_not_applied`; the order is applied",
    ),
];

fn demo_v2() -> String {
    let text = DEMO_PROGRAM.replacen("version = 1\n", "version = 2\n", 1);
    assert_ne!(text, DEMO_PROGRAM, "the demo program names `version = 1`");
    text
}

/// The valid commands every case runs after: one member with points and a little credit, an
/// order, a hold that was released, and version 2 of the program.
fn baseline() -> Vec<String> {
    vec![
        json!({"merchant": "demo", "terminal": "pos-1", "txn": "b1", "at": EARLIER[0],
            "enroll": {"phone": "+15550001111", "card": "C1", "birthday": "07-04"}}),
        json!({"merchant": "demo", "admin": "ops", "txn": "b2", "at": EARLIER[1],
            "adjust": {"member": {"card": "C1"}, "points": 5000, "credit": "10.00",
                "reason": "goodwill"}}),
        json!({"merchant": "demo", "terminal": "pos-1", "txn": "b3", "at": EARLIER[2],
            "purchase": {"member": {"card": "C1"}, "lines": [
                {"sku": "LATTE", "category": "coffee", "qty": 2, "unit_price": "4.50"},
                {"sku": "MUG", "category": "merch", "qty": 1, "unit_price": "15.00"}],
                "total": "24.00"}}),
        json!({"merchant": "demo", "terminal": "pos-1", "txn": "b4", "at": EARLIER[3],
            "hold": {"member": {"card": "C1"}, "points": 200}}),
        json!({"merchant": "demo", "terminal": "pos-1", "txn": "b5", "at": EARLIER[4],
            "release": {"hold": {"txn": "b4"}}}),
        json!({"merchant": "demo", "admin": "ops", "txn": "b6", "at": EARLIER[5],
            "load_program": {"program": demo_v2()}}),
    ]
    .into_iter()
    .map(|line| line.to_string())
    .collect()
}

/// A terminal's command with the given body, sent at `AT`.
fn terminal(txn: &str, body: &str, value: Value) -> Value {
    let mut line = json!({"merchant": "demo", "terminal": "pos-1", "txn": txn, "at": AT});
    line[body] = value;
    line
}

fn admin(txn: &str, body: &str, value: Value) -> Value {
    let mut line = json!({"merchant": "demo", "admin": "ops", "txn": txn, "at": AT});
    line[body] = value;
    line
}

/// A valid order of member C1 for 24.00.
fn order() -> Value {
    json!({"member": {"card": "C1"}, "lines": [
        {"sku": "LATTE", "category": "coffee", "qty": 2, "unit_price": "4.50"},
        {"sku": "MUG", "category": "merch", "qty": 1, "unit_price": "15.00"}],
        "total": "24.00"})
}

fn purchase(txn: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut body = order();
    edit(&mut body);
    terminal(txn, "purchase", body).to_string()
}

/// An order of one line, with the line and total as given.
fn one_line(txn: &str, line: Value, total: &str) -> String {
    purchase(txn, |order| {
        order["lines"] = json!([line]);
        order["total"] = json!(total);
    })
}

struct Case {
    name: &'static str,
    line: String,
    reason: Reason,
}

fn case(name: &'static str, line: impl Into<String>, reason: Reason) -> Case {
    Case {
        name,
        line: line.into(),
        reason,
    }
}

fn cases() -> Vec<Case> {
    use Reason::*;
    let valid = purchase("x0", |_| {});
    let mut cases = vec![
        // ---- not a command at all ----
        case("empty line", "", Invalid),
        case("not JSON", "hello", Invalid),
        case("truncated JSON", &valid[..valid.len() / 2], Invalid),
        case("truncated by one byte", &valid[..valid.len() - 1], Invalid),
        case("trailing garbage", format!("{valid} x"), Invalid),
        case("an array", "[1,2,3]", Invalid),
        case("a string", "\"purchase\"", Invalid),
        case("a number", "42", Invalid),
        case("null", "null", Invalid),
        case("an empty object", "{}", Invalid),
        // ---- the envelope ----
        case(
            "unknown top-level field",
            {
                let mut line = terminal("x1", "purchase", order());
                line["coupon"] = json!("SPRING");
                line.to_string()
            },
            Invalid,
        ),
        case(
            "two bodies",
            {
                let mut line = terminal("x2", "purchase", order());
                line["event"] = json!({"member": {"card": "C1"}, "name": "review"});
                line.to_string()
            },
            Invalid,
        ),
        case(
            "no body",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x3", "at": AT}).to_string(),
            Invalid,
        ),
        case(
            "missing at",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x4", "purchase": order()})
                .to_string(),
            Invalid,
        ),
        case(
            "at is not a date",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x5", "at": "yesterday",
                "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "at is 30 February",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x6",
                "at": "2026-02-30T10:00:00Z", "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "at without a time zone",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x90",
                "at": "2026-03-02T10:00:00", "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "at is a number",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x7", "at": 1_772_445_600,
                "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "empty merchant",
            json!({"merchant": "", "terminal": "pos-1", "txn": "x8", "at": AT,
                "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "no merchant",
            json!({"terminal": "pos-1", "txn": "x9", "at": AT, "purchase": order()}).to_string(),
            Invalid,
        ),
        case(
            "no key",
            json!({"merchant": "demo", "terminal": "pos-1", "at": AT, "purchase": order()})
                .to_string(),
            Invalid,
        ),
        case(
            "txn and id both",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x10",
                "id": "0123456789abcdef0123456789abcdef", "at": AT, "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "id is not hex",
            json!({"merchant": "demo", "terminal": "pos-1",
                "id": "zz23456789abcdef0123456789abcdef", "at": AT, "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "id is too short",
            json!({"merchant": "demo", "terminal": "pos-1", "id": "0123abcd", "at": AT,
                "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "terminal and admin both",
            json!({"merchant": "demo", "terminal": "pos-1", "admin": "ops", "txn": "x11",
                "at": AT, "purchase": order()})
            .to_string(),
            Invalid,
        ),
        case(
            "neither terminal nor admin",
            json!({"merchant": "demo", "txn": "x12", "at": AT, "purchase": order()}).to_string(),
            Invalid,
        ),
        case(
            "empty txn",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": " ", "at": AT,
                "purchase": order()})
            .to_string(),
            Invalid,
        ),
        // ---- the order's shape ----
        case(
            "unknown field in purchase",
            purchase("x13", |o| o["tip"] = json!("1.00")),
            Invalid,
        ),
        case(
            "unknown field in line",
            purchase("x14", |o| o["lines"][0]["colour"] = json!("red")),
            Invalid,
        ),
        case(
            "unknown field in member",
            purchase("x15", |o| o["member"] = json!({"email": "a@example.com"})),
            Invalid,
        ),
        case(
            "no lines",
            purchase("x16", |o| o["lines"] = json!([])),
            Invalid,
        ),
        case(
            "501 lines",
            purchase("x17", |o| {
                let line = json!({"sku": "ESPRESSO", "qty": 1, "unit_price": "1.00"});
                o["lines"] = Value::Array(vec![line; 501]);
                o["total"] = json!("501.00");
            }),
            Invalid,
        ),
        case(
            "negative qty",
            one_line(
                "x18",
                json!({"sku": "LATTE", "qty": -1, "unit_price": "4.50"}),
                "0",
            ),
            Invalid,
        ),
        case(
            "zero qty",
            one_line(
                "x19",
                json!({"sku": "LATTE", "qty": 0, "unit_price": "4.50"}),
                "0",
            ),
            Invalid,
        ),
        case(
            "qty as a string",
            one_line(
                "x20",
                json!({"sku": "LATTE", "qty": "2", "unit_price": "4.50"}),
                "9.00",
            ),
            Invalid,
        ),
        case(
            "qty beyond a 64-bit integer",
            purchase("x91", |o| {
                o["lines"] = json!([{"sku": "LATTE", "qty": 1, "unit_price": "4.50"}]);
                o["total"] = json!("4.50");
            })
            .replace("\"qty\":1", "\"qty\":9223372036854775808"),
            Invalid,
        ),
        case(
            "fractional qty",
            one_line(
                "x21",
                json!({"sku": "LATTE", "qty": 1.5, "unit_price": "4.50"}),
                "6.75",
            ),
            Invalid,
        ),
        case(
            "qty above 1,000,000",
            one_line(
                "x22",
                json!({"sku": "LATTE", "qty": 1_000_001, "unit_price": "0.01"}),
                "10000.01",
            ),
            Invalid,
        ),
        case(
            "unit_price with 3 decimals in USD",
            one_line(
                "x23",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "4.505"}),
                "4.51",
            ),
            Invalid,
        ),
        case(
            "negative unit_price",
            one_line(
                "x24",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "-4.50"}),
                "0",
            ),
            Invalid,
        ),
        case(
            "unit_price is not a number",
            one_line(
                "x25",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "four"}),
                "4.50",
            ),
            Invalid,
        ),
        case(
            "discount larger than the line",
            one_line(
                "x26",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "4.50", "discount": "4.51"}),
                "4.50",
            ),
            Invalid,
        ),
        case(
            "negative discount",
            one_line(
                "x27",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "4.50", "discount": "-1.00"}),
                "5.50",
            ),
            Invalid,
        ),
        case(
            "huge unit_price",
            one_line(
                "x28",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "99999999999999999999"}),
                "99999999999999999999",
            ),
            Invalid,
        ),
        case(
            "unit_price of exactly 1,000,000,000.00 (the bound is below it)",
            one_line(
                "x29",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "1000000000.00"}),
                "1000000000.00",
            ),
            Invalid,
        ),
        case(
            "qty × unit_price of exactly 1,000,000,000.00",
            one_line(
                "x88",
                json!({"sku": "LATTE", "qty": 1_000_000, "unit_price": "1000.00"}),
                "1000000000.00",
            ),
            Invalid,
        ),
        case(
            "total of exactly 1,000,000,000.00",
            purchase("x89", |o| o["total"] = json!("1000000000.00")),
            Invalid,
        ),
        case(
            "qty × unit_price beyond the bound",
            one_line(
                "x30",
                json!({"sku": "LATTE", "qty": 1_000_000, "unit_price": "999999.99"}),
                "999999990000.00",
            ),
            Invalid,
        ),
        case(
            "unit_price beyond what a decimal holds",
            one_line(
                "x31",
                json!({"sku": "LATTE", "qty": 1, "unit_price": "1e40"}),
                "1.00",
            ),
            Invalid,
        ),
        case(
            "huge total",
            purchase("x32", |o| o["total"] = json!("1000000000000.00")),
            Invalid,
        ),
        case(
            "total less than the lines",
            purchase("x33", |o| o["total"] = json!("23.99")),
            Invalid,
        ),
        case(
            "huge points payment",
            purchase("x34", |o| {
                o["pay"] = json!({"points": 1_000_000_000_000_i64})
            }),
            Invalid,
        ),
        case(
            "negative points payment",
            purchase("x35", |o| o["pay"] = json!({"points": -100})),
            Invalid,
        ),
        case(
            "negative credit payment",
            purchase("x36", |o| o["pay"] = json!({"credit": "-1.00"})),
            Invalid,
        ),
        case(
            "empty sku",
            one_line(
                "x37",
                json!({"sku": "", "qty": 1, "unit_price": "4.50"}),
                "4.50",
            ),
            Invalid,
        ),
        case(
            "blank sku",
            one_line(
                "x38",
                json!({"sku": "   ", "qty": 1, "unit_price": "4.50"}),
                "4.50",
            ),
            Invalid,
        ),
        case(
            "sku of 129 characters",
            one_line(
                "x39",
                json!({"sku": "S".repeat(129), "qty": 1, "unit_price": "4.50"}),
                "4.50",
            ),
            Invalid,
        ),
        case(
            "free product reward without the product",
            purchase("x40", |o| {
                o["lines"] = json!([{"sku": "MUG", "qty": 1, "unit_price": "15.00"}]);
                o["total"] = json!("15.00");
                o["rewards"] = json!(["free_latte"]);
            }),
            Invalid,
        ),
        case(
            "invalid phone",
            purchase("x41", |o| o["member"] = json!({"phone": "call me"})),
            Invalid,
        ),
        case(
            "too short phone",
            purchase("x42", |o| o["member"] = json!({"phone": "12"})),
            Invalid,
        ),
        // ---- other commands' shapes ----
        case(
            "birthday 02-30",
            terminal(
                "x43",
                "enroll",
                json!({"phone": "+15550002222", "birthday": "02-30"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "birthday 13-01",
            terminal("x44", "enroll", json!({"card": "C77", "birthday": "13-01"})).to_string(),
            Invalid,
        ),
        case(
            "birthday without a dash",
            terminal("x45", "enroll", json!({"card": "C78", "birthday": "0704"})).to_string(),
            Invalid,
        ),
        case(
            "enroll with an invalid phone",
            terminal("x46", "enroll", json!({"phone": "+1 555 CALL NOW"})).to_string(),
            Invalid,
        ),
        case(
            "the birthday event is the engine's",
            terminal(
                "x47",
                "event",
                json!({"member": {"card": "C1"}, "name": "birthday"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "blank event name",
            terminal(
                "x48",
                "event",
                json!({"member": {"card": "C1"}, "name": " "}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "adjust of nothing",
            admin(
                "x49",
                "adjust",
                json!({"member": {"card": "C1"}, "points": 0, "reason": "goodwill"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "adjust with an unknown reason",
            admin(
                "x50",
                "adjust",
                json!({"member": {"card": "C1"}, "points": 5, "reason": "because"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "negative hold",
            terminal(
                "x51",
                "hold",
                json!({"member": {"card": "C1"}, "points": -5}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "return of zero units",
            terminal(
                "x52",
                "return",
                json!({"order": {"txn": "b3"}, "lines": [{"sku": "LATTE", "qty": 0}]}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "load_program with invalid TOML",
            admin(
                "x53",
                "load_program",
                json!({"program": "merchant = \"demo\"\nversion = [oops"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "load_program with an invalid program",
            admin(
                "x54",
                "load_program",
                json!({"program": DEMO_PROGRAM
                    .replacen("version = 1\n", "version = 3\n", 1)
                    .replacen("max_redeem_percent = 50", "max_redeem_percent = 150", 1)}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "load_program of a version that is not newer",
            admin("x55", "load_program", json!({"program": demo_v2()})).to_string(),
            Invalid,
        ),
        case(
            "load_program of another merchant's program",
            admin(
                "x56",
                "load_program",
                json!({"program": DEMO_PROGRAM
                    .replacen("merchant = \"demo\"", "merchant = \"other\"", 1)}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "issue_cards count 0",
            admin("x57", "issue_cards", json!({"count": 0, "prefix": "K"})).to_string(),
            Invalid,
        ),
        case(
            "issue_cards count 100001",
            admin(
                "x58",
                "issue_cards",
                json!({"count": 100_001, "prefix": "K"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "issue_cards with a prefix that is not alphanumeric",
            admin("x59", "issue_cards", json!({"count": 1, "prefix": "K-"})).to_string(),
            Invalid,
        ),
        // ---- who may do what ----
        case(
            "terminal sends adjust",
            terminal(
                "x60",
                "adjust",
                json!({"member": {"card": "C1"}, "points": 1000, "reason": "goodwill"}),
            )
            .to_string(),
            Unauthorized,
        ),
        case(
            "terminal sends load_program",
            terminal(
                "x61",
                "load_program",
                json!({"program": DEMO_PROGRAM.replacen("version = 1\n", "version = 9\n", 1)}),
            )
            .to_string(),
            Unauthorized,
        ),
        case(
            "terminal sends issue_cards",
            terminal("x62", "issue_cards", json!({"count": 5, "prefix": "K"})).to_string(),
            Unauthorized,
        ),
        case(
            "terminal sends tick",
            terminal("x63", "tick", json!({})).to_string(),
            Unauthorized,
        ),
        case(
            "an operator sends tick",
            admin("x64", "tick", json!({})).to_string(),
            Unauthorized,
        ),
        // ---- what the state says ----
        case(
            "unknown merchant",
            json!({"merchant": "nobody", "terminal": "pos-1", "txn": "x65", "at": AT,
                "purchase": order()})
            .to_string(),
            UnknownMerchant,
        ),
        case(
            "unknown program_version",
            {
                let mut line = terminal("x66", "purchase", order());
                line["program_version"] = json!(99);
                line.to_string()
            },
            UnknownProgramVersion,
        ),
        case(
            "superseded program_version",
            {
                let mut line = terminal("x67", "purchase", order());
                line["program_version"] = json!(1);
                line.to_string()
            },
            ProgramSuperseded,
        ),
        case(
            "stale event from a terminal",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "x68",
                "at": "2026-01-20T10:00:00Z", "purchase": order()})
            .to_string(),
            StaleEvent,
        ),
        case(
            "the baseline's key with other content",
            json!({"merchant": "demo", "terminal": "pos-1", "txn": "b3", "at": EARLIER[2],
                "purchase": {"member": {"card": "C1"}, "lines": [
                    {"sku": "LATTE", "category": "coffee", "qty": 2, "unit_price": "4.50"}],
                    "total": "9.00"}})
            .to_string(),
            Conflict,
        ),
        case(
            "unknown member id",
            admin(
                "x69",
                "adjust",
                json!({"member": {"id": 99}, "points": 5, "reason": "goodwill"}),
            )
            .to_string(),
            UnknownMember,
        ),
        case(
            "hold for an unknown card",
            terminal(
                "x70",
                "hold",
                json!({"member": {"card": "NOPE"}, "points": 5}),
            )
            .to_string(),
            UnknownMember,
        ),
        case(
            "hold beyond the balance",
            terminal(
                "x71",
                "hold",
                json!({"member": {"card": "C1"}, "points": 1_000_000}),
            )
            .to_string(),
            InsufficientPoints,
        ),
        case(
            "debit beyond the balance",
            admin(
                "x72",
                "adjust",
                json!({"member": {"card": "C1"}, "points": -1_000_000, "reason": "correction"}),
            )
            .to_string(),
            InsufficientPoints,
        ),
        case(
            "pay with more credit than the member has",
            purchase("x73", |o| o["pay"] = json!({"credit": "20.00"})),
            InsufficientCredit,
        ),
        case(
            "pay more than half with points",
            purchase("x74", |o| o["pay"] = json!({"points": 2000})),
            RedemptionOverLimit,
        ),
        case(
            "redeem fewer points than the minimum",
            purchase("x75", |o| o["pay"] = json!({"points": 50})),
            RedemptionUnderMinimum,
        ),
        case(
            "unknown reward",
            purchase("x76", |o| o["rewards"] = json!(["a_pony"])),
            UnknownReward,
        ),
        case(
            "unknown promotion code",
            purchase("x77", |o| o["codes"] = json!(["SPRING"])),
            CodeUnknown,
        ),
        case(
            "more than 10 promotion codes",
            purchase("x77a", |o| {
                o["codes"] =
                    json!(["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "A10", "A11"])
            }),
            Invalid,
        ),
        case(
            "a promotion code that is only dashes",
            purchase("x77b", |o| o["codes"] = json!(["--"])),
            Invalid,
        ),
        case(
            "scratch codes with a short seed",
            admin(
                "x77c",
                "issue_codes",
                json!({"promotion": "summer_scratch", "count": 5, "seed": "abc"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "too many scratch codes at once",
            admin(
                "x77d",
                "issue_codes",
                json!({"promotion": "summer_scratch", "count": 100_001, "seed": "00".repeat(32)}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "scratch codes of a promotion that is not scratch",
            admin(
                "x77e",
                "issue_codes",
                json!({"promotion": "spring10", "count": 5, "seed": "00".repeat(32)}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "assigning a promotion that does not exist",
            admin(
                "x77f",
                "assign_promotion",
                json!({"promotion": "nope", "members": [{"card": "C1"}]}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "assigning to nobody",
            admin(
                "x77g",
                "assign_promotion",
                json!({"promotion": "welcome_back"}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "a terminal issuing scratch codes",
            terminal(
                "x77h",
                "issue_codes",
                json!({"promotion": "summer_scratch", "count": 5, "seed": "00".repeat(32)}),
            )
            .to_string(),
            Unauthorized,
        ),
        case(
            "a tag longer than 64 characters",
            admin(
                "x77i",
                "tag",
                json!({"member": {"card": "C1"}, "add": ["t".repeat(65)]}),
            )
            .to_string(),
            Invalid,
        ),
        case(
            "return of an order never sent",
            terminal("x78", "return", json!({"order": {"txn": "never"}})).to_string(),
            UnknownOrder,
        ),
        case(
            "return of a hold",
            terminal("x79", "return", json!({"order": {"txn": "b4"}})).to_string(),
            UnknownOrder,
        ),
        case(
            "return of more than was bought",
            terminal(
                "x80",
                "return",
                json!({"order": {"txn": "b3"}, "lines": [{"sku": "LATTE", "qty": 3}]}),
            )
            .to_string(),
            ReturnExceedsOrder,
        ),
        case(
            "return of a product not bought",
            terminal(
                "x81",
                "return",
                json!({"order": {"txn": "b3"}, "lines": [{"sku": "BAGEL", "qty": 1}]}),
            )
            .to_string(),
            ReturnExceedsOrder,
        ),
        case(
            "release of a hold never made",
            terminal("x82", "release", json!({"hold": {"txn": "never"}})).to_string(),
            UnknownHold,
        ),
        case(
            "capture of an order, not a hold",
            terminal("x83", "capture", json!({"hold": {"txn": "b3"}})).to_string(),
            UnknownHold,
        ),
        case(
            "release of a released hold",
            terminal("x84", "release", json!({"hold": {"txn": "b4"}})).to_string(),
            HoldClosed,
        ),
        case(
            "capture of a released hold",
            terminal(
                "x85",
                "capture",
                json!({"hold": {"txn": "b4"}, "points": 10}),
            )
            .to_string(),
            HoldClosed,
        ),
        case(
            "enroll with a phone that is taken",
            terminal("x86", "enroll", json!({"phone": "+1 555 000 1111"})).to_string(),
            AliasTaken,
        ),
        case(
            "issue a card that exists",
            admin("x87", "issue_cards", json!({"cards": ["C1"]})).to_string(),
            AliasTaken,
        ),
    ];
    // Every case has its own key, so none is a duplicate of another.
    cases.sort_by_key(|case| case.name);
    cases
}

fn digest_and_members(replayer: &Replayer) -> (u128, Vec<tally_engine::core::Member>) {
    let members = replayer
        .ledger()
        .merchant("demo")
        .map(|m| m.members.iter().cloned().collect())
        .unwrap_or_default();
    (replayer.ledger().digest(), members)
}

/// Applies one line; returns every result it produced (a tick would be one more).
fn apply(replayer: &mut Replayer, number: u64, line: &str) -> Vec<CommandResult> {
    let mut results = Vec::new();
    replayer.apply_line(number, line, &mut |result| results.push(result.clone()));
    results
}

fn replayer_after_baseline() -> Replayer {
    let mut replayer = Replayer::new(vec![DEMO_PROGRAM.to_string()]).expect("valid program");
    for (i, line) in baseline().iter().enumerate() {
        let results = apply(&mut replayer, i as u64 + 1, line);
        let last = results.last().expect("a result");
        assert!(
            last.applied().is_some(),
            "baseline line {} was not applied: {}",
            i + 1,
            last.to_json_line()
        );
    }
    replayer
}

#[test]
fn every_bad_line_is_rejected_with_its_reason_and_changes_nothing() {
    let mut replayer = replayer_after_baseline();
    let mut failures = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        let before = digest_and_members(&replayer);
        let number = 100 + i as u64;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply(&mut replayer, number, &case.line)
        }));
        let results = match outcome {
            Ok(results) => results,
            Err(_) => {
                failures.push(format!("{}: the engine panicked", case.name));
                // The state may be half-changed: carry on from a fresh baseline.
                replayer = replayer_after_baseline();
                continue;
            }
        };
        let problem = match results.as_slice() {
            [result] => match &result.status {
                Status::Rejected { reason, message } if *reason == case.reason => {
                    if message.trim().is_empty() {
                        Some("rejected without a message".to_string())
                    } else {
                        None
                    }
                }
                _ => Some(format!(
                    "expected rejected `{}`, got {}",
                    case.reason.code(),
                    result.to_json_line()
                )),
            },
            other => Some(format!(
                "expected one result, got {}: {:?}",
                other.len(),
                other.iter().map(|r| r.to_json_line()).collect::<Vec<_>>()
            )),
        };
        if let Some(problem) = problem {
            failures.push(format!("{}: {problem}", case.name));
        }
        let after = digest_and_members(&replayer);
        if after != before {
            failures.push(format!("{}: the state changed", case.name));
            replayer = replayer_after_baseline();
        }
    }
    // The engine still serves: a valid order applies, and the baseline's is a duplicate.
    let valid = purchase("after-1", |_| {});
    let results = apply(&mut replayer, 1_000, &valid);
    if results.last().and_then(|r| r.applied()).is_none() {
        failures.push(format!("a valid order after the bad lines: {results:?}"));
    }
    let repeat = &baseline()[2];
    let results = apply(&mut replayer, 1_001, repeat);
    if !matches!(
        results.last().map(|r| &r.status),
        Some(Status::Duplicate { .. })
    ) {
        failures.push(format!("the baseline's order sent again: {results:?}"));
    }
    replayer.finish(&mut |_| {});
    assert!(
        failures.is_empty(),
        "{} of {} bad lines misbehaved:\n  {}",
        failures.len(),
        cases().len(),
        failures.join("\n  ")
    );
}

#[test]
fn every_reason_code_is_covered_or_documented_as_unreachable() {
    let table = cases();
    let mut missing = Vec::new();
    for reason in Reason::ALL {
        let covered = table.iter().any(|case| case.reason == reason);
        let documented = NOT_REACHABLE_OFFLINE.iter().any(|(r, _)| *r == reason);
        match (covered, documented) {
            (true, false) | (false, true) => {}
            (true, true) => missing.push(format!(
                "{} is listed as unreachable but a case produces it",
                reason.code()
            )),
            (false, false) => missing.push(format!(
                "{} has no bad-input case and is not documented as unreachable",
                reason.code()
            )),
        }
    }
    for (_, why) in NOT_REACHABLE_OFFLINE {
        assert!(!why.trim().is_empty(), "say why a code is unreachable");
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn case_names_are_unique() {
    let table = cases();
    let mut names: Vec<&str> = table.iter().map(|case| case.name).collect();
    names.dedup();
    assert_eq!(names.len(), table.len(), "two cases share a name");
}
