//! `--verify`: a model of every acknowledged command, compared at the end with the balances
//! the server reads back.
//!
//! Every `applied` result lists the ledger entries its command wrote. The model adds them up
//! per member and wallet: what the member's points and credit must be if every acknowledged
//! command was applied exactly once and nothing else touched the member. The sum does not
//! depend on the order the engine applied concurrent commands in, so it holds under any
//! concurrency. Members are this run's own (their cards carry the run's tag), so they start
//! at zero; holds are all released before the end so none lapses unseen.
//!
//! What counts: `applied` results; a `duplicate` answer to a frame sent again after a lost
//! connection stands for its first result (the first attempt was applied but its answer was
//! lost); a deliberate retry's `duplicate` adds nothing. Quotes and balance queries change
//! nothing. A member named in a frame that never got an answer is left out (its outcome is
//! unknown) and counted.

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;
use serde::Serialize;
use tally_protocol::{CommandKind, CommandResult, Status, Wallet};

use crate::fleet::Sent;

/// A member of a merchant: (merchant, card).
pub type MemberKey = (String, String);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Wallets {
    pub points: Decimal,
    pub credit: Decimal,
}

#[derive(Debug, Default)]
pub struct Model {
    wallets: HashMap<MemberKey, Wallets>,
    uncertain: HashSet<MemberKey>,
    /// Fresh keys answered `duplicate`: the engine saw a command it should not have.
    unexpected_duplicates: u64,
}

impl Model {
    /// Adds what an answered command did. `resent`: the frame went out more than once.
    pub fn record(&mut self, merchant: &str, sent: &Sent, result: &CommandResult, resent: bool) {
        if sent.deliberate_retry || matches!(sent.kind, CommandKind::Quote | CommandKind::Balance) {
            return;
        }
        let Some(card) = &sent.card else {
            return;
        };
        let applied = match &result.status {
            Status::Applied(applied) => applied,
            Status::Duplicate { first } if resent => match &first.status {
                Status::Applied(applied) => applied,
                _ => return,
            },
            Status::Duplicate { .. } => {
                self.unexpected_duplicates += 1;
                return;
            }
            Status::Rejected { .. } => return,
        };
        let wallets = self
            .wallets
            .entry((merchant.to_string(), card.clone()))
            .or_default();
        for entry in &applied.entries {
            match entry.wallet {
                Wallet::Points => wallets.points += entry.amount,
                Wallet::Credit => wallets.credit += entry.amount,
            }
        }
    }

    /// A command whose frame was never answered: its member's balance is unknown.
    pub fn unanswered(&mut self, merchant: &str, sent: &Sent) {
        if let Some(card) = &sent.card {
            self.uncertain.insert((merchant.to_string(), card.clone()));
        }
    }

    /// The members to read back, with what their wallets must hold.
    pub fn expected(&self) -> Vec<(MemberKey, Wallets)> {
        let mut members: Vec<_> = self
            .wallets
            .iter()
            .filter(|(member, _)| !self.uncertain.contains(*member))
            .map(|(member, wallets)| (member.clone(), *wallets))
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members
    }

    pub fn report(&self, checked: u64, mismatches: Vec<Mismatch>) -> VerifyReport {
        VerifyReport {
            members_checked: checked,
            mismatched: mismatches.len() as u64,
            first_mismatches: mismatches.into_iter().take(10).collect(),
            members_uncertain: self.uncertain.len() as u64,
            unexpected_duplicates: self.unexpected_duplicates,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub merchant: String,
    pub card: String,
    pub expected: Wallets,
    /// `None`: the server does not know the member.
    pub read_back: Option<Wallets>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub members_checked: u64,
    pub mismatched: u64,
    pub first_mismatches: Vec<Mismatch>,
    /// Members left out: a frame naming them was never answered.
    pub members_uncertain: u64,
    pub unexpected_duplicates: u64,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.mismatched == 0 && self.unexpected_duplicates == 0
    }

    pub fn text(&self) -> String {
        let mut text = format!(
            "verify: {} members read back, {} differ from the model of acknowledged results; {} left out (unanswered frames); {} fresh keys answered duplicate\n",
            self.members_checked, self.mismatched, self.members_uncertain, self.unexpected_duplicates
        );
        for m in &self.first_mismatches {
            text.push_str(&format!(
                "  {}/{}: expected points {} credit {}, read back {}\n",
                m.merchant,
                m.card,
                m.expected.points,
                m.expected.credit,
                m.read_back
                    .map_or("nothing (unknown member)".to_string(), |w| format!(
                        "points {} credit {}",
                        w.points, w.credit
                    ))
            ));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_protocol::{Applied, EntryKind, EntryView};

    fn sent(kind: CommandKind, deliberate_retry: bool) -> Sent {
        Sent {
            kind,
            card: Some("c1".into()),
            deliberate_retry,
        }
    }

    fn earned(points: i64) -> CommandResult {
        let entry = EntryView {
            wallet: Wallet::Points,
            kind: EntryKind::Accrual,
            amount: Decimal::from(points),
            rule: None,
            lots: Default::default(),
        };
        CommandResult {
            merchant: "demo".into(),
            key: "k".into(),
            command: CommandKind::Purchase,
            status: Status::Applied(Box::new(Applied {
                entries: vec![entry],
                ..Applied::default()
            })),
        }
    }

    #[test]
    fn sums_applied_entries_once_whatever_the_retries() {
        let mut model = Model::default();
        let first = earned(10);
        model.record("demo", &sent(CommandKind::Purchase, false), &first, false);
        model.record("demo", &sent(CommandKind::Quote, false), &earned(99), false);
        let duplicate = CommandResult {
            status: Status::Duplicate {
                first: Box::new(first.clone()),
            },
            ..first.clone()
        };
        // A deliberate retry adds nothing; a resent frame's duplicate stands for its first
        // result, which this model had not seen.
        model.record(
            "demo",
            &sent(CommandKind::Purchase, true),
            &duplicate,
            false,
        );
        model.record(
            "demo",
            &sent(CommandKind::Purchase, false),
            &duplicate,
            true,
        );
        let expected = model.expected();
        assert_eq!(expected.len(), 1);
        assert_eq!(expected[0].1.points, Decimal::from(20));
        // A fresh key answered duplicate without a resend is counted against the engine.
        model.record(
            "demo",
            &sent(CommandKind::Purchase, false),
            &duplicate,
            false,
        );
        assert!(!model.report(1, Vec::new()).passed());
    }

    #[test]
    fn unanswered_members_are_left_out() {
        let mut model = Model::default();
        model.record(
            "demo",
            &sent(CommandKind::Purchase, false),
            &earned(5),
            false,
        );
        model.unanswered("demo", &sent(CommandKind::Purchase, false));
        assert!(model.expected().is_empty());
        assert_eq!(model.report(0, Vec::new()).members_uncertain, 1);
    }
}
