//! The allocator's one setting that differs from its default.
//!
//! The binaries allocate with mimalloc, which gives memory freed and unused for a second back
//! to the system. A busy engine frees and takes back memory all the time (results, log
//! buffers, groups), and on a kernel with transparent huge pages every page it takes back is
//! zeroed again, 2 MiB at a time: a quarter of `tally ingest`'s CPU in a profile. Waiting ten
//! seconds instead still returns what an idle engine no longer uses.

use libmimalloc_sys as mi;

/// How long freed memory stays with the process before it goes back to the system.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// `mi_option_purge_delay`: its place in mimalloc's C enum, which the Rust binding does not
/// name (a test checks it against the environment variable of that name).
const OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// The environment variable that sets the purge delay; it wins over `PURGE_DELAY_MS`.
pub const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";

/// Sets the purge delay, unless the environment sets it. Call first thing in `main`, before
/// any thread starts: mimalloc's option setter is not thread-safe.
pub fn tune() {
    if std::env::var_os(PURGE_DELAY_VARIABLE).is_some() {
        return;
    }
    let delay_ms = std::ffi::c_long::try_from(PURGE_DELAY_MS).expect("fits");
    #[allow(unsafe_code)]
    // SAFETY: a plain C call with a valid option number; `tune` runs before other threads.
    unsafe {
        mi::mi_option_set(OPTION_PURGE_DELAY, delay_ms);
    }
}

/// The purge delay in force, in milliseconds.
#[allow(
    clippy::useless_conversion,
    reason = "C's long is 64 bits here, 32 on some platforms"
)]
pub fn purge_delay_ms() -> i64 {
    #[allow(unsafe_code)]
    // SAFETY: a plain C call with a valid option number.
    let delay_ms = unsafe { mi::mi_option_get(OPTION_PURGE_DELAY) };
    i64::from(delay_ms)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::{PURGE_DELAY_MS, PURGE_DELAY_VARIABLE};

    /// Runs `reports_the_purge_delay` in a process of its own (options are set once per
    /// process, before threads) and returns what it printed.
    fn purge_delay_in_a_child(variable: Option<&str>) -> String {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"));
        child.args([
            "--exact",
            "allocator::tests::reports_the_purge_delay",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        match variable {
            Some(value) => child.env(PURGE_DELAY_VARIABLE, value),
            None => child.env_remove(PURGE_DELAY_VARIABLE),
        };
        let output = child.output().expect("the child runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("text")
    }

    #[test]
    fn the_purge_delay_is_ours_unless_the_environment_sets_it() {
        // The variable reaches the option we set: so its number is the right one.
        let told = purge_delay_in_a_child(Some("1234"));
        assert!(told.contains("purge delay: 1234 ms"), "{told}");
        let ours = purge_delay_in_a_child(None);
        assert!(
            ours.contains(&format!("purge delay: {PURGE_DELAY_MS} ms")),
            "{ours}"
        );
    }

    #[test]
    #[ignore = "run by the test above, in a process of its own"]
    fn reports_the_purge_delay() {
        super::tune();
        println!("purge delay: {} ms", super::purge_delay_ms());
    }
}
