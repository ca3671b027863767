//! Workload set-up shared by the benchmarks: a ledger with the demo program and a population
//! of members holding cards, and streams of synthetic commands.

use chrono::TimeDelta;
use tally_engine::replay::Replayer;
use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};
use tally_protocol::{Body, Command, IdemKey, IssueCards, Origin};

/// Cards issued per `issue_cards` command while populating.
const CARDS_PER_COMMAND: u64 = 100_000;

/// A replayer with the demo program and `members` issued cards `C0000000001…`.
pub fn populated(members: u64, config: &WorkloadConfig) -> Replayer {
    let mut replayer =
        Replayer::new(vec![DEMO_PROGRAM.to_string()]).expect("demo program is valid");
    let at = config.start - TimeDelta::hours(1);
    let mut issued = 0;
    let mut batch = 0;
    while issued < members {
        let count = CARDS_PER_COMMAND.min(members - issued);
        batch += 1;
        let command = Command {
            merchant: config.merchant.clone(),
            origin: Origin::Admin("bench".into()),
            key: IdemKey::Admin {
                admin: "bench".into(),
                txn: format!("cards-{batch}"),
            },
            at,
            program_version: None,
            body: Body::IssueCards(IssueCards {
                count: count as u32,
                prefix: Some("C".into()),
                cards: Vec::new(),
            }),
        };
        replayer.apply(&command, &mut |result| {
            assert!(result.applied().is_some(), "{result:?}")
        });
        issued += count;
    }
    replayer
}

/// The benchmark workload: 5-line purchases by `members` Zipf-distributed members.
pub fn purchases(members: u64) -> WorkloadConfig {
    WorkloadConfig::purchases_only(members)
}

pub fn commands(workload: &mut Workload, count: u64) -> Vec<Command> {
    workload.take(count as usize).collect()
}
