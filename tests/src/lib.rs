//! Helpers shared by the integration tests.
//!
//! A scenario is a folder under `tests/scenarios/`:
//! - one or more program files `*.toml` (installed before the first command);
//! - `commands.jsonl`: commands, one per line (blank lines and `#` comments are skipped);
//! - `expected.json`: what must hold afterwards:
//!   `{"results": {"<line>": {subset of the result JSON}}, "balances": [{subset of a member row}]}`.
//!
//! A subset matches when every key it names has the same value in the actual JSON (objects
//! recursively; arrays element by element and of the same length; decimals by value, so
//! "4.5" matches "4.50"). Every scenario is also checked for conservation and for
//! determinism (run twice: same state digest, same balances).

use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde_json::{json, Map, Value};
use tally_engine::replay::Replayer;
use tally_protocol::{CommandKind, CommandResult};

/// The result of each command line, by line number (engine ticks left out).
pub struct ScenarioRun {
    pub results: Vec<(u64, CommandResult)>,
    pub balances: Vec<Value>,
    pub digest: u128,
}

pub fn scenario_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("scenario folder exists")
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.join("commands.jsonl").exists())
        .collect();
    dirs.sort();
    dirs
}

pub fn run_commands(dir: &Path) -> Result<ScenarioRun, String> {
    let mut programs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .map(|entry| entry.expect("readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    programs.sort();
    let texts: Vec<String> = programs
        .iter()
        .map(|p| std::fs::read_to_string(p).expect("readable program"))
        .collect();
    let mut replayer =
        Replayer::new(texts).map_err(|errors| format!("program not valid: {errors}"))?;
    let commands =
        std::fs::read_to_string(dir.join("commands.jsonl")).map_err(|e| e.to_string())?;
    let mut results = Vec::new();
    for (index, line) in commands.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let number = index as u64 + 1;
        let mut last = None;
        replayer.apply_line(number, line, &mut |result| {
            if result.command != CommandKind::Tick || trimmed.contains("\"tick\"") {
                last = Some(result.clone());
            }
        });
        results.push((number, last.expect("every line has a result")));
    }
    replayer.finish(&mut |_| {});
    Ok(ScenarioRun {
        results,
        balances: balances(&replayer),
        digest: replayer.ledger().digest(),
    })
}

/// Every member of every merchant as a JSON row.
pub fn balances(replayer: &Replayer) -> Vec<Value> {
    let mut rows = Vec::new();
    for merchant in replayer.ledger().merchants() {
        let program = merchant.program();
        let money =
            |minor: i64| tally_engine::money::from_minor(minor, program.minor_units).to_string();
        for member in &merchant.members {
            let aliases: Vec<Value> = member
                .aliases
                .iter()
                .map(|a| serde_json::to_value(a).expect("serialisable"))
                .collect();
            rows.push(json!({
                "merchant": &*merchant.name,
                "member": member.id,
                "aliases": aliases,
                "enrolled": member.enrolled_at.is_some(),
                "points": member.points,
                "available": member.available_points(),
                "pending": member.pending_points,
                "held": member.held_points,
                "credit": money(member.credit_minor),
                "credit_held": money(member.held_credit_minor),
                "tier": program.tier_id(member.tier),
                "points_earned": member.counters.lifetime.points_earned,
                "amount_spent": money(member.counters.lifetime.amount_spent_minor),
                "orders": member.counters.lifetime.orders,
                "lots": member.lots.len(),
            }));
        }
    }
    rows
}

/// Runs a scenario folder and checks its expectations; the error lists every mismatch.
pub fn check_scenario(dir: &Path) -> Result<(), String> {
    let first = run_commands(dir)?;
    let second = run_commands(dir)?;
    let mut problems = Vec::new();
    if first.digest != second.digest || first.balances != second.balances {
        problems.push("two runs of the same commands ended in different states".to_string());
    }
    let expected_text = std::fs::read_to_string(dir.join("expected.json"))
        .map_err(|e| format!("expected.json: {e}"))?;
    let expected: Value =
        serde_json::from_str(&expected_text).map_err(|e| format!("expected.json: {e}"))?;
    let expected = expected
        .as_object()
        .ok_or("expected.json must be an object")?;
    for key in expected.keys() {
        if !["results", "balances", "members", "comment"].contains(&key.as_str()) {
            problems.push(format!("expected.json: unknown key {key:?}"));
        }
    }
    check_json_lines(&first, &mut problems);
    if let Some(results) = expected.get("results").and_then(Value::as_object) {
        check_results(&first, results, &mut problems);
    }
    if let Some(rows) = expected.get("balances").and_then(Value::as_array) {
        check_balances(&first, rows, &mut problems);
    }
    if let Some(count) = expected.get("members").and_then(Value::as_u64) {
        if first.balances.len() as u64 != count {
            problems.push(format!(
                "expected {count} members in all, found {}",
                first.balances.len()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Results are written as JSON by hand (`protocol/src/result_json.rs`): it must write what
/// `serde_json` writes, byte for byte, for every result a scenario gives.
fn check_json_lines(run: &ScenarioRun, problems: &mut Vec<String>) {
    for (number, result) in &run.results {
        let ours = result.to_json_line();
        let theirs = serde_json::to_string(result).expect("results serialise");
        if ours != theirs {
            problems.push(format!(
                "line {number}: the result's JSON line differs from serde_json's\n    ours:   {ours}\n    theirs: {theirs}"
            ));
        }
    }
}

fn check_results(run: &ScenarioRun, expected: &Map<String, Value>, problems: &mut Vec<String>) {
    for (line, subset) in expected {
        let Ok(number) = line.parse::<u64>() else {
            problems.push(format!("results: {line:?} is not a line number"));
            continue;
        };
        let Some((_, result)) = run.results.iter().find(|(n, _)| *n == number) else {
            problems.push(format!("line {number}: no command on that line"));
            continue;
        };
        let actual = serde_json::to_value(result).expect("results serialise");
        let mut mismatches = Vec::new();
        subset_matches(subset, &actual, &format!("line {number}"), &mut mismatches);
        if !mismatches.is_empty() {
            problems.push(format!("{}\n    actual: {}", mismatches.join("\n"), actual));
        }
    }
}

fn check_balances(run: &ScenarioRun, rows: &[Value], problems: &mut Vec<String>) {
    for row in rows {
        let merchant = row
            .get("merchant")
            .and_then(Value::as_str)
            .unwrap_or("demo");
        let Some(member) = row.get("member").and_then(Value::as_u64) else {
            problems.push(format!("balances: row without \"member\": {row}"));
            continue;
        };
        let Some(actual) = run
            .balances
            .iter()
            .find(|b| b["merchant"] == merchant && b["member"] == member)
        else {
            problems.push(format!("balances: no member {member} of {merchant}"));
            continue;
        };
        let mut mismatches = Vec::new();
        subset_matches(
            row,
            actual,
            &format!("member {member} of {merchant}"),
            &mut mismatches,
        );
        if !mismatches.is_empty() {
            problems.push(format!("{}\n    actual: {}", mismatches.join("\n"), actual));
        }
    }
}

/// Records where `actual` differs from what `expected` names.
pub fn subset_matches(expected: &Value, actual: &Value, path: &str, mismatches: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(expected), Value::Object(actual)) => {
            for (key, value) in expected {
                let place = format!("{path}.{key}");
                match actual.get(key) {
                    Some(found) => subset_matches(value, found, &place, mismatches),
                    None if is_empty(value) => {}
                    None => mismatches.push(format!("{place}: expected {value}, missing")),
                }
            }
        }
        (Value::Array(expected), Value::Array(actual)) => {
            if expected.len() != actual.len() {
                mismatches.push(format!(
                    "{path}: expected {} items, found {}",
                    expected.len(),
                    actual.len()
                ));
                return;
            }
            for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
                subset_matches(e, a, &format!("{path}[{i}]"), mismatches);
            }
        }
        _ if same_scalar(expected, actual) => {}
        _ => mismatches.push(format!("{path}: expected {expected}, found {actual}")),
    }
}

/// Results leave out empty and zero fields; an expectation of zero or empty matches absence.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Array(items) => items.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => decimal(s).is_some_and(|d| d.is_zero()),
        Value::Object(map) => map.is_empty(),
    }
}

fn decimal(text: &str) -> Option<Decimal> {
    text.parse::<Decimal>().ok()
}

fn same_scalar(expected: &Value, actual: &Value) -> bool {
    if expected == actual {
        return true;
    }
    let as_decimal = |v: &Value| match v {
        Value::String(s) => decimal(s),
        Value::Number(n) => decimal(&n.to_string()),
        _ => None,
    };
    matches!((as_decimal(expected), as_decimal(actual)), (Some(a), Some(b)) if a == b)
}
