//! Runs every scenario folder under `tests/scenarios/` through the one helper.

use std::path::Path;

use tally_tests::{check_scenario, scenario_dirs};

/// The issue asks for at least this many; keep the suite from shrinking unnoticed.
const MINIMUM_SCENARIOS: usize = 40;

#[test]
fn every_scenario_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let dirs = scenario_dirs(&root);
    let only = std::env::var("SCENARIO").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for dir in &dirs {
        let name = dir
            .file_name()
            .expect("named")
            .to_string_lossy()
            .to_string();
        if only
            .as_ref()
            .is_some_and(|only| !name.contains(only.as_str()))
        {
            continue;
        }
        ran += 1;
        if let Err(problem) = check_scenario(dir) {
            failures.push(format!(
                "scenario {name}:\n  {}",
                problem.replace('\n', "\n  ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} scenarios failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if only.is_none() {
        assert!(
            dirs.len() >= MINIMUM_SCENARIOS,
            "only {} scenarios; expected at least {MINIMUM_SCENARIOS}",
            dirs.len()
        );
    }
}
