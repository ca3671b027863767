//! Checkpoints are exact: a ledger written to a checkpoint at any point of any command stream
//! and read back has the same digest, and answers every later command (new ones, resent old
//! ones, returns of old orders, time-driven work) exactly as the original does.

use proptest::prelude::*;
use tally_engine::checkpoint;
use tally_engine::core::Ledger;
use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};
use tally_protocol::Command;

fn stream(seed: u64, members: u64, count: usize) -> Vec<Command> {
    let config = WorkloadConfig {
        seed,
        ..WorkloadConfig::demo(members)
    };
    Workload::new(config).take(count).collect()
}

fn apply(ledger: &mut Ledger, command: &Command) -> std::sync::Arc<tally_protocol::CommandResult> {
    let result = ledger.apply_shared(command, command.at);
    ledger.clear_outbox();
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn a_checkpoint_at_any_point_restores_a_ledger_that_goes_on_the_same(
        seed in 1u64..1_000_000,
        members in 5u64..80,
        cut in 1usize..400,
        kept_whole in 0usize..50,
        resend_every in 2usize..9,
    ) {
        let commands = stream(seed, members, 600);
        let mut original = Ledger::new();
        original.set_results_kept_whole(kept_whole);
        original.install_program(DEMO_PROGRAM, commands[0].at).unwrap();
        for command in &commands[..cut] {
            apply(&mut original, command);
        }
        // Written into an earlier checkpoint's memory, as a running engine does.
        let stale = vec![vec![0xA5u8; 1000]; 4];
        let bytes = checkpoint::encode(&original, cut as u64, Some(commands[cut - 1].at), stale);
        let dir = std::env::temp_dir().join(format!(
            "tally-checkpoint-property-{}-{seed}-{cut}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        checkpoint::write(&dir, &bytes).unwrap();
        let read = checkpoint::read(&dir).unwrap().expect("written");
        std::fs::remove_dir_all(&dir).unwrap();
        prop_assert_eq!(read.last_batch, cut as u64);
        let mut restored = read.ledger;
        restored.set_results_kept_whole(kept_whole);
        prop_assert_eq!(restored.digest(), original.digest());

        let resent = commands[..cut].iter().step_by(resend_every);
        for command in resent.chain(&commands[cut..]) {
            let expected = apply(&mut original, command);
            let actual = apply(&mut restored, command);
            prop_assert_eq!(actual, expected);
        }
        prop_assert_eq!(restored.digest(), original.digest());
        restored.verify();
    }
}
