//! Offline application of a command file through the same core: imports, simulations
//! ("what if we had run this program last month") and tests.
//!
//! The engine clock of a replay is the latest event time seen so far. Before each command,
//! due time-driven work of its merchant is done by an engine-issued `tick`, and at the end
//! every merchant is ticked to the final clock: the same commands the live engine would log.

use std::io::{BufRead, Write};
use std::sync::Arc;

use tally_protocol::{
    parse_command_line, Body, Command, CommandKind, CommandResult, IdemKey, Origin, Reason, Status,
    Tick, ENGINE_ADMIN,
};

use crate::core::Ledger;
use crate::lines::{BoundedLines, MAX_LINE_BYTES};
use crate::money::from_minor;
use crate::program::ProgramErrors;
use crate::shards::{Item, Shards};
use crate::Timestamp;

/// Lines parsed per batch handed from the parser thread to the applier.
const PARSE_BATCH_LINES: usize = 4096;
/// Batches in flight between the threads: bounds the memory of a replay.
const PARSE_BATCHES_IN_FLIGHT: usize = 4;

pub struct Replayer {
    ledger: Ledger,
    now: Option<Timestamp>,
    programs: Vec<String>,
    /// Where a batch of commands of several merchants is applied (`shards`).
    shards: Shards,
    pub stats: Stats,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub commands: u64,
    pub ticks: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub rejected_by_reason: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    fn count(&mut self, result: &CommandResult) {
        if result.command == CommandKind::Tick && result.applied().is_some() {
            self.ticks += 1;
            return;
        }
        self.commands += 1;
        match &result.status {
            Status::Applied(_) => self.applied += 1,
            Status::Duplicate { .. } => self.duplicates += 1,
            Status::Rejected { reason, .. } => {
                self.rejected += 1;
                *self.rejected_by_reason.entry(reason.code()).or_default() += 1;
            }
        }
    }
}

impl Replayer {
    /// Checks the programs now; they are installed at the first command's time.
    pub fn new(programs: Vec<String>) -> Result<Replayer, ProgramErrors> {
        for text in &programs {
            crate::program::parse_and_compile(text)?;
        }
        Ok(Replayer {
            ledger: Ledger::new(),
            now: None,
            programs,
            shards: Shards::new(crate::shards::default_count()),
            stats: Stats::default(),
        })
    }

    /// How many shards apply a batch's commands (default: `shards::default_count`).
    pub fn set_shards(&mut self, count: usize) {
        self.shards.set_count(count);
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn advance_clock(&mut self, at: Timestamp) -> Timestamp {
        let now = self.now.map_or(at, |now| now.max(at));
        if self.now.is_none() {
            for text in std::mem::take(&mut self.programs) {
                self.ledger
                    .install_program(&text, now)
                    .expect("checked in new()");
            }
        }
        self.now = Some(now);
        now
    }

    /// Applies one command (after any tick its merchant is due), giving every result to `out`.
    pub fn apply(&mut self, command: &Command, out: &mut impl FnMut(&CommandResult)) {
        let now = self.advance_clock(command.at);
        self.tick_if_due(&command.merchant, now, out);
        let result = self.ledger.apply_shared(command, now);
        self.ledger.clear_outbox();
        self.stats.count(&result);
        out(&result);
    }

    /// Applies `commands` in order, as `apply` does one, warming a few ahead
    /// (`Ledger::warm_ahead`).
    pub fn apply_all(&mut self, commands: &[Command], out: &mut impl FnMut(&CommandResult)) {
        for (applied, command) in commands.iter().enumerate() {
            self.ledger.warm_ahead(applied, commands[applied..].iter());
            self.apply(command, out);
        }
    }

    /// Applies one JSON line; a line that cannot be read gets an `invalid` rejection.
    pub fn apply_line(
        &mut self,
        line_number: u64,
        line: &str,
        out: &mut impl FnMut(&CommandResult),
    ) {
        match parse_command_line(line) {
            Ok(command) => self.apply(&command, out),
            Err(error) => self.reject(&parse_rejection(line_number, &error), out),
        }
    }

    fn tick_if_due(
        &mut self,
        merchant: &str,
        now: Timestamp,
        out: &mut impl FnMut(&CommandResult),
    ) {
        if let Some((_, result)) = tick_if_due(&mut self.ledger, merchant, now) {
            self.ledger.clear_outbox();
            self.stats.count(&result);
            out(&result);
        }
    }

    /// Ticks every merchant to the final clock.
    pub fn finish(&mut self, out: &mut impl FnMut(&CommandResult)) {
        let Some(now) = self.now else { return };
        let names: Vec<String> = self
            .ledger
            .merchants()
            .map(|m| m.name.to_string())
            .collect();
        for name in names {
            self.tick_if_due(&name, now, out);
        }
        self.ledger.verify();
    }

    /// Reads a whole command file, parsing on a second thread while this one applies.
    pub fn run(
        &mut self,
        input: impl BufRead + Send,
        out: &mut impl FnMut(&CommandResult),
    ) -> std::io::Result<()> {
        std::thread::scope(|scope| {
            let (sender, receiver) = std::sync::mpsc::sync_channel(PARSE_BATCHES_IN_FLIGHT);
            let parser = scope.spawn(move || parse_lines(input, sender));
            for batch in receiver {
                self.apply_batch(batch, out);
            }
            parser.join().expect("the parser thread does not panic")
        })?;
        self.finish(out);
        Ok(())
    }

    /// Applies a batch of parsed lines in order: on their merchants' shards when that can
    /// pay, else one after the other; the results are the same either way.
    fn apply_batch(&mut self, batch: Vec<ParsedLine>, out: &mut impl FnMut(&CommandResult)) {
        let mut commands = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::with_capacity(batch.len());
        for (line_number, parsed) in batch {
            match parsed {
                Ok(command) => {
                    commands.push(command);
                    unreadable.push(None);
                }
                Err(error) => unreadable.push(Some(parse_rejection(line_number, &error))),
            }
        }
        if !self.shards.worth_it(&commands) {
            let mut applied = 0;
            for line in unreadable {
                match line {
                    Some(rejection) => self.reject(&rejection, out),
                    None => {
                        self.ledger.warm_ahead(applied, commands[applied..].iter());
                        self.apply(&commands[applied], out);
                        applied += 1;
                    }
                }
            }
            return;
        }
        let items = commands
            .into_iter()
            .map(|command| {
                let now = self.advance_clock(command.at);
                Item::new(command, now, None)
            })
            .collect();
        let mut steps = self.shards.apply(&mut self.ledger, items).into_iter();
        self.ledger.clear_outbox();
        for line in unreadable {
            if let Some(rejection) = line {
                self.reject(&rejection, out);
                continue;
            }
            let step = steps.next().expect("a step per command");
            for result in step.tick.iter().map(|(_, tick)| tick).chain([&step.result]) {
                self.stats.count(result);
                out(result);
            }
        }
    }

    fn reject(&mut self, rejection: &CommandResult, out: &mut impl FnMut(&CommandResult)) {
        self.stats.count(rejection);
        out(rejection);
    }

    /// Final balances as CSV, sorted by merchant and member.
    pub fn write_balances(&self, out: impl Write) -> std::io::Result<()> {
        write_balances(&self.ledger, out)
    }
}

/// Every member's balances as CSV, sorted by merchant and member.
pub fn write_balances(ledger: &Ledger, mut out: impl Write) -> std::io::Result<()> {
    writeln!(out, "merchant,member,aliases,points,available,pending,held,credit,credit_held,tier,points_earned,amount_spent,orders")?;
    for merchant in ledger.merchants() {
        let program = merchant.program();
        for member in &merchant.members {
            let aliases: Vec<String> = member
                .aliases
                .iter()
                .map(|alias| match alias {
                    tally_protocol::Alias::Phone(phone) => phone.clone(),
                    tally_protocol::Alias::Card(card) => format!("card:{card}"),
                })
                .collect();
            let lifetime = member.counters.lifetime;
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                merchant.name,
                member.id,
                aliases.join(";"),
                member.points,
                member.available_points(),
                member.pending_points,
                member.held_points,
                from_minor(member.credit_minor, program.minor_units),
                from_minor(member.held_credit_minor, program.minor_units),
                program.tier_id(member.tier).unwrap_or_default(),
                lifetime.points_earned,
                from_minor(lifetime.amount_spent_minor, program.minor_units),
                lifetime.orders,
            )?;
        }
    }
    Ok(())
}

type ParsedLine = (u64, Result<Command, tally_protocol::ParseError>);

fn parse_lines(
    input: impl BufRead,
    sender: std::sync::mpsc::SyncSender<Vec<ParsedLine>>,
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(PARSE_BATCH_LINES);
    for (index, line) in BoundedLines::new(input, MAX_LINE_BYTES).enumerate() {
        let line_number = index as u64 + 1;
        let line = match line?.text() {
            Ok(line) => line,
            Err(why) => {
                batch.push((line_number, Err(unreadable(why))));
                continue;
            }
        };
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        batch.push((line_number, parse_command_line(&line)));
        if batch.len() == PARSE_BATCH_LINES {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(PARSE_BATCH_LINES));
            if sender.send(full).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = sender.send(batch);
    }
    Ok(())
}

/// Does the merchant's time-driven work due by `now` with an engine-issued tick, if any is
/// due; returns the tick and its result.
pub fn tick_if_due(
    ledger: &mut Ledger,
    merchant: &str,
    now: Timestamp,
) -> Option<(Command, Arc<CommandResult>)> {
    if ledger.due_at(merchant).is_none_or(|due| due > now) {
        return None;
    }
    let tick = tick_command(merchant, now);
    let result = ledger.apply_shared(&tick, now);
    assert!(
        result.applied().is_some(),
        "an engine tick is never rejected: {result:?}"
    );
    Some((tick, result))
}

/// The command the engine issues to do time-driven work for `merchant` up to `now`.
pub fn tick_command(merchant: &str, now: Timestamp) -> Command {
    Command {
        merchant: merchant.to_string(),
        origin: Origin::Admin(ENGINE_ADMIN.into()),
        key: IdemKey::Admin {
            admin: ENGINE_ADMIN.into(),
            txn: format!("tick-{}", now.timestamp_micros()),
        },
        at: now,
        program_version: None,
        body: Body::Tick(Tick {}),
    }
}

/// The rejection of a line that could not be read as a command.
/// What a line that could not be read is answered with.
pub(crate) fn unreadable(why: String) -> tally_protocol::ParseError {
    tally_protocol::ParseError {
        message: why,
        merchant: None,
        key: None,
    }
}

pub(crate) fn parse_rejection(
    line_number: u64,
    error: &tally_protocol::ParseError,
) -> CommandResult {
    let key = error
        .key
        .as_ref()
        .map_or_else(|| format!("line:{line_number}"), |key| key.to_string());
    let merchant = error.merchant.clone().unwrap_or_default();
    CommandResult::rejected(
        &merchant,
        key,
        CommandKind::Unknown,
        Reason::Invalid,
        format!("line {line_number}: {}", error.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

    /// Warming ahead reads and changes nothing: the same commands applied one by one and as
    /// a group give the same results and the same state.
    #[test]
    fn commands_applied_as_a_group_end_as_applied_one_by_one() {
        let commands: Vec<Command> = Workload::new(WorkloadConfig::demo(300))
            .take(3000)
            .collect();
        let mut one_by_one = Replayer::new(vec![DEMO_PROGRAM.to_string()]).unwrap();
        let mut grouped = Replayer::new(vec![DEMO_PROGRAM.to_string()]).unwrap();
        let mut first = Vec::new();
        for command in &commands {
            one_by_one.apply(command, &mut |result| first.push(result.clone()));
        }
        let mut second = Vec::new();
        grouped.apply_all(&commands, &mut |result| second.push(result.clone()));
        assert_eq!(first, second);
        assert_eq!(one_by_one.ledger().digest(), grouped.ledger().digest());
        assert!(
            one_by_one.stats.applied > 2000,
            "{:?}",
            one_by_one.stats.applied
        );
    }
}
