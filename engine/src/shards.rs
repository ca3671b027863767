//! Shards: a group's commands applied on several threads at once.
//!
//! Every merchant belongs to one shard (by a hash of its name). For a group whose commands
//! name merchants of two or more shards, the engine lends each busy shard its merchants'
//! state (moved to the shard's thread through a bounded queue, not shared), each shard
//! applies its commands in the group's order, and the engine puts the state back and numbers
//! the entries in the group's order. Commands of different merchants touch disjoint state,
//! so the outcome — state, results, log, entry numbers — is the outcome of applying the
//! group on one thread, whatever the number of shards (`engine/tests/shards.rs`).
//!
//! Shard 0 is the engine's own thread; shards 1.. have a worker thread each.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use tally_protocol::{Command, CommandKind, CommandResult, Status};

use crate::core::{Entry, Fingerprint, Ledger};
use crate::replay::tick_if_due;
use crate::Timestamp;

/// The most shards: more threads than this only wait on each other.
pub const MAX_SHARDS: usize = 64;
/// Groups smaller than this are applied on the engine's thread: handing them out would cost
/// more than it saves.
pub const MIN_SHARDED_GROUP: usize = 16;

/// The default number of shards: the cores available but one, which the pipeline's other
/// threads (reader, committer, result writer) keep busy between them. On two cores a second
/// shard only competes with them (`docs/performance.md`).
pub fn default_count() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    (cores - 1).clamp(1, MAX_SHARDS)
}

/// A command on its way to the engine thread, with what the thread that received it (the
/// reader, a connection's task) could work out before: the engine thread only applies.
pub struct Incoming {
    /// Boxed: a command is some 460 bytes, moved from thread to queue to group to log.
    pub command: Box<Command>,
    /// The command's JSON as it came in, if it came as JSON and the log keeps it as it is
    /// (`log::Logged::json`).
    pub json: Option<String>,
    /// `Fingerprint::of(&command)`, worked out on the thread that made this.
    pub fingerprint: Fingerprint,
}

impl Incoming {
    pub fn new(command: impl Into<Box<Command>>, json: Option<String>) -> Incoming {
        let command = command.into();
        let fingerprint = Fingerprint::of(&command);
        Incoming {
            command,
            json,
            fingerprint,
        }
    }
}

/// A command and the engine time it is applied at.
pub struct Item {
    pub incoming: Incoming,
    pub now: Timestamp,
}

impl Item {
    /// An item whose fingerprint is worked out here, on the caller's thread.
    pub fn new(command: Command, now: Timestamp, json: Option<String>) -> Item {
        Item {
            incoming: Incoming::new(command, json),
            now,
        }
    }
}

/// What applying one command did.
pub struct Step {
    /// The engine's tick for the command's merchant that was due first, if any (logged),
    /// and its result.
    pub tick: Option<(Command, Arc<CommandResult>)>,
    pub result: Arc<CommandResult>,
    /// The command (and its JSON as it came in), when it changed the state and so goes to
    /// the log.
    pub logged: Option<(Box<Command>, Option<String>)>,
    pub now: Timestamp,
    /// Entries the tick and the command wrote, in the order written.
    pub entries: usize,
}

/// Applies one command: the tick due for its merchant first, then the command.
pub fn step(ledger: &mut Ledger, item: Item) -> Step {
    let Item {
        incoming:
            Incoming {
                command,
                json,
                fingerprint,
            },
        now,
    } = item;
    let entries_before = ledger.entries().len();
    let tick = tick_if_due(ledger, &command.merchant, now);
    let entries_before_command = ledger.entries().len();
    let result = ledger.apply_fingerprinted(&command, now, fingerprint);
    // Only what changed the state is logged: rejections, duplicates and queries are not.
    let query = matches!(command.kind(), CommandKind::Quote | CommandKind::Balance);
    let logged = if matches!(result.status, Status::Applied(_)) && !query {
        Some((command, json))
    } else {
        assert_eq!(
            ledger.entries().len(),
            entries_before_command,
            "a command that is not logged wrote entries"
        );
        None
    };
    Step {
        tick,
        result,
        logged,
        now,
        entries: ledger.entries().len() - entries_before,
    }
}

/// A shard's part of a group: its merchants' state and its commands, in the group's order.
struct Job {
    part: Ledger,
    items: Vec<Item>,
}

struct Done {
    part: Ledger,
    steps: Vec<Step>,
}

fn apply_part(mut job: Job) -> Done {
    let mut steps = Vec::with_capacity(job.items.len());
    let mut items = job.items.into_iter();
    loop {
        let rest = items.as_slice().iter().map(|item| &*item.incoming.command);
        job.part.warm_ahead(steps.len(), rest);
        let Some(item) = items.next() else { break };
        steps.push(step(&mut job.part, item));
    }
    Done {
        part: job.part,
        steps,
    }
}

struct Worker {
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(shard: usize) -> Worker {
        // One part at a time: the engine waits for every part of a group before the next.
        let (jobs, receive) = bounded::<Job>(1);
        let (report, done) = bounded(1);
        let thread = std::thread::Builder::new()
            .name(format!("tally-shard-{shard}"))
            .spawn(move || {
                for job in receive {
                    if report.send(apply_part(job)).is_err() {
                        break;
                    }
                }
            })
            .expect("a shard thread starts");
        Worker {
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // A shard that panicked has already stopped the engine's group with its panic.
            let _ = thread.join();
        }
    }
}

pub struct Shards {
    count: usize,
    workers: Vec<Worker>,
    /// Groups applied on their shards so far.
    sharded_groups: u64,
    /// Each shard's journal, lent with its part and kept between groups.
    journals: Vec<Vec<Entry>>,
}

impl Shards {
    /// `count` shards (at least 1, at most `MAX_SHARDS`): `count - 1` worker threads.
    pub fn new(count: usize) -> Shards {
        let count = count.clamp(1, MAX_SHARDS);
        Shards {
            count,
            workers: (1..count).map(Worker::start).collect(),
            sharded_groups: 0,
            journals: (0..count).map(|_| Vec::new()).collect(),
        }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Changes the number of shards: the workers are started afresh (nothing is lent
    /// between groups, so none holds state) and `sharded_groups` counts from 0 again.
    pub fn set_count(&mut self, count: usize) {
        if count != self.count {
            *self = Shards::new(count);
        }
    }

    /// How many groups were applied on their shards (the others on the engine's thread).
    pub fn sharded_groups(&self) -> u64 {
        self.sharded_groups
    }

    /// The shard that owns a merchant: fixed for a shard count, and the same on every run.
    pub fn shard_of(&self, merchant: &str) -> usize {
        let hash = xxhash_rust::xxh3::xxh3_64(merchant.as_bytes());
        // The hash's high bits: xxh3's lowest bits are poorly mixed for short names (of nine
        // names of 4 to 8 letters, all nine hashes were even).
        ((u128::from(hash) * self.count as u128) >> 64) as usize
    }

    /// Whether applying these commands on their shards can pay: a group large enough, with
    /// commands for more than one shard.
    pub fn worth_it<'a>(&self, commands: impl IntoIterator<Item = &'a Command>) -> bool {
        let mut commands = commands.into_iter();
        let Some(first) = commands.next() else {
            return false;
        };
        if self.count == 1 {
            return false;
        }
        let first = self.shard_of(&first.merchant);
        let (mut count, mut mixed) = (1, false);
        for command in commands {
            count += 1;
            mixed = mixed || self.shard_of(&command.merchant) != first;
            if mixed && count >= MIN_SHARDED_GROUP {
                return true;
            }
        }
        false
    }

    /// Applies a group's commands, each on its merchant's shard, and returns their steps in
    /// the group's order; the ledger ends as if they had been applied one after the other
    /// (its journal holds their entries, numbered in that order).
    pub fn apply(&mut self, ledger: &mut Ledger, items: Vec<Item>) -> Vec<Step> {
        self.sharded_groups += 1;
        let order: Vec<usize> = items
            .iter()
            .map(|item| self.shard_of(&item.incoming.command.merchant))
            .collect();
        let mut sizes = vec![0; self.count];
        for &shard in &order {
            sizes[shard] += 1;
        }
        let mut parts: Vec<Vec<Item>> = sizes.iter().map(|&n| Vec::with_capacity(n)).collect();
        for (item, &shard) in items.into_iter().zip(&order) {
            parts[shard].push(item);
        }
        let mut jobs: Vec<Option<Job>> = parts
            .into_iter()
            .zip(&mut self.journals)
            .map(|(items, journal)| lend_part(ledger, items, journal))
            .collect();
        for (worker, job) in self.workers.iter().zip(&mut jobs[1..]) {
            if let Some(job) = job.take() {
                let queue = worker.jobs.as_ref().expect("the shard is running");
                queue.send(job).expect("a shard thread is running");
            }
        }
        let mut done = vec![jobs[0].take().map(apply_part)];
        for (worker, &size) in self.workers.iter().zip(&sizes[1..]) {
            done.push((size > 0).then(|| {
                worker
                    .done
                    .recv()
                    .expect("a shard thread stopped: an invariant broke there")
            }));
        }
        self.merge(ledger, &order, done)
    }

    /// Puts every part back and takes the steps and entries in the group's order. The
    /// parts' journals are kept, empty, for the next group: no regrowing them each time.
    fn merge(
        &mut self,
        ledger: &mut Ledger,
        order: &[usize],
        done: Vec<Option<Done>>,
    ) -> Vec<Step> {
        let mut parts_steps = Vec::with_capacity(self.count);
        for (done, journal) in done.into_iter().zip(&mut self.journals) {
            parts_steps.push(done.map_or_else(Vec::new, |done| {
                *journal = ledger.restore(done.part);
                done.steps
            }));
        }
        let total: usize = self.journals.iter().map(Vec::len).sum();
        ledger.reserve_entries(total);
        let mut steps = Vec::with_capacity(order.len());
        let mut parts_steps: Vec<_> = parts_steps.into_iter().map(Vec::into_iter).collect();
        let mut entries: Vec<_> = self.journals.iter_mut().map(|j| j.drain(..)).collect();
        for &shard in order {
            let step = parts_steps[shard].next().expect("a step for every command");
            ledger.adopt_entries(entries[shard].by_ref().take(step.entries));
            steps.push(step);
        }
        assert!(
            entries.iter_mut().all(|left| left.next().is_none())
                && parts_steps.iter_mut().all(|left| left.next().is_none()),
            "every step and entry of every part is taken, in the group's order"
        );
        steps
    }
}

/// A shard's job: its commands and the state of the merchants they name (none: no job), its
/// entries written into the shard's `journal`, taken until the merge gives it back.
fn lend_part(ledger: &mut Ledger, items: Vec<Item>, journal: &mut Vec<Entry>) -> Option<Job> {
    if items.is_empty() {
        return None;
    }
    let names: BTreeSet<&str> = items
        .iter()
        .map(|item| item.incoming.command.merchant.as_str())
        .collect();
    let part = ledger.lend(&names, std::mem::take(journal));
    Some(Job { part, items })
}
