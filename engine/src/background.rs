//! The threads around the engine thread (reading input, writing results, committing the log)
//! run as background work. The engine thread applies every command and is the pipeline's
//! critical path; on two cores it spent a quarter of `tally ingest`'s wall clock runnable but
//! waiting for a core the helpers held. Linux's `SCHED_BATCH` stops a helper that wakes
//! from preempting it, and a nice value of 10 gives the helpers a smaller share whenever all
//! of them want to run at once. They still get every cycle the engine thread leaves, and
//! when the engine waits for them (a full queue, a commit) they are all that runs.
//!
//! Not so `tally serve`'s committer: there every reply waits for its group's commit, and a
//! committer in the background lost the cores to the connection threads and the clients it
//! kept waiting, so that the whole machine idled; it runs at normal priority there.

/// The helpers' nice value: 10 is a tenth of the weight of the engine thread's 0.
#[cfg(target_os = "linux")]
const NICE: libc::c_int = 10;

/// Marks the calling thread as background work, where the system has such a thing. A hint,
/// so a refusal is ignored.
pub fn background_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: both calls only read their arguments (`param` outlives the call); pid 0 and
        // the thread's own id name the calling thread, whose nice value Linux keeps apart.
        #[allow(unsafe_code)]
        unsafe {
            libc::sched_setscheduler(0, libc::SCHED_BATCH, &param);
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE);
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_background_thread_is_batch_work_at_a_lower_priority() {
        let (policy, nice) = std::thread::spawn(|| {
            super::background_thread();
            // SAFETY: both read the calling thread's own scheduling; no pointers.
            #[allow(unsafe_code)]
            unsafe {
                let tid = libc::gettid() as libc::id_t;
                (
                    libc::sched_getscheduler(0),
                    libc::getpriority(libc::PRIO_PROCESS, tid),
                )
            }
        })
        .join()
        .unwrap();
        assert_eq!(policy, libc::SCHED_BATCH);
        // Raising a nice value needs no privilege; it only ever goes up from where it was.
        assert!(nice >= super::NICE, "nice {nice}");
        // SAFETY: as above, for this (the test's) thread, which is left as it was.
        #[allow(unsafe_code)]
        let own = unsafe { libc::sched_getscheduler(0) };
        assert_eq!(own, libc::SCHED_OTHER);
    }
}
