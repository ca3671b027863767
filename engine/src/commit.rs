//! The committer: writes groups to the log on a thread of its own, in order, so that the
//! engine thread applies the next group while the previous one is being made durable.
//!
//! One group at a time: the engine waits for a group's commit before it hands over the
//! next, and answers a group only after that wait. A failed commit ends the thread; the
//! engine learns of it from `wait` and stops acknowledging.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tally_protocol::CommandResult;

use crate::core::Entry;
use crate::log::{CommandLog, LogError, Logged};

/// A group's log write: its commands and the entries they wrote, and the results the group
/// evicted from the ledger's recent window (freed here, off the engine thread). Emptied (the
/// entries by the engine), the same buffers serve a later group.
#[derive(Default)]
pub struct Job {
    pub records: Vec<Logged>,
    pub entries: Vec<Entry>,
    pub evicted: Vec<Arc<CommandResult>>,
}

impl Job {
    /// Frees what the group held, here, and keeps the buffers' room for a later group. The
    /// entries go back as they are: the engine thread drops them (`Ledger::swap_entries`).
    fn into_spare(self) -> Job {
        Job {
            records: crate::emptied(self.records, crate::GROUP_ITEMS_KEPT_MAX),
            entries: self.entries,
            evicted: crate::emptied(self.evicted, crate::GROUP_ITEMS_KEPT_MAX),
        }
    }
}

/// How the committer thread is scheduled beside the engine thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitterPriority {
    /// Background work (`background.rs`): when the engine thread sets the pace and nothing
    /// waits on commits but the results written behind it (`tally ingest`).
    Background,
    /// Like the engine thread: when every reply waits for a commit (`tally serve`).
    Normal,
}

pub struct Committer {
    jobs: Option<SyncSender<Job>>,
    /// When each handed-over group became durable (with its emptied buffers), or why it
    /// did not.
    done: Receiver<Result<(Instant, Job), LogError>>,
    outstanding: bool,
    /// The emptied buffers of the last group made durable, for the next one.
    spare: Job,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    pub fn start(log: Arc<CommandLog>, priority: CommitterPriority) -> Committer {
        let (jobs, receive) = sync_channel::<Job>(1);
        let (report, done) = sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("tally-committer".into())
            .spawn(move || {
                if priority == CommitterPriority::Background {
                    crate::background::background_thread();
                }
                for job in receive {
                    let written = log.append(&job.records, &job.entries);
                    let failed = written.is_err();
                    // The group is freed here, off the engine thread.
                    let spare = job.into_spare();
                    let report_sent = report.send(written.map(|()| (Instant::now(), spare)));
                    if report_sent.is_err() || failed {
                        break;
                    }
                }
            })
            .expect("the committer thread starts");
        Committer {
            jobs: Some(jobs),
            done,
            outstanding: false,
            spare: Job::default(),
            thread: Some(thread),
        }
    }

    /// Empty buffers for the next group: those of the last group made durable, if any.
    pub fn take_spare(&mut self) -> Job {
        std::mem::take(&mut self.spare)
    }

    /// Hands a group to the log. A group with nothing to log is not written.
    pub fn submit(&mut self, job: Job) {
        assert!(!self.outstanding, "one group is committed at a time");
        if job.records.is_empty() {
            assert!(job.entries.is_empty(), "entries come from logged commands");
            return;
        }
        let jobs = self.jobs.as_ref().expect("the committer is running");
        jobs.send(job)
            .expect("the committer waits for work until it is stopped or a commit fails");
        self.outstanding = true;
    }

    /// Waits until the group handed over last is durable: when it became so, or `None` if
    /// nothing was outstanding.
    pub fn wait(&mut self) -> Result<Option<Instant>, LogError> {
        if !std::mem::take(&mut self.outstanding) {
            return Ok(None);
        }
        let answer = self
            .done
            .recv()
            .expect("the committer answers every group it takes");
        self.take_answer(answer)
    }

    /// `wait`, for at most `timeout`: `None` if the group is not durable yet.
    pub fn wait_for(&mut self, timeout: Duration) -> Option<Result<Option<Instant>, LogError>> {
        if !self.outstanding {
            return Some(Ok(None));
        }
        match self.done.recv_timeout(timeout) {
            Ok(answer) => {
                self.outstanding = false;
                Some(self.take_answer(answer))
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                unreachable!("the committer answers every group it takes")
            }
        }
    }

    fn take_answer(
        &mut self,
        answer: Result<(Instant, Job), LogError>,
    ) -> Result<Option<Instant>, LogError> {
        let (durable_at, spare) = answer?;
        self.spare = spare;
        Ok(Some(durable_at))
    }
}

impl Drop for Committer {
    /// Stops the thread after the group it is writing, if any.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the committer does not panic");
        }
    }
}
