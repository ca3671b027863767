//! The allocator the binaries use: mimalloc, asked the way that keeps it on its fast path, and
//! its three settings that differ from its defaults.
//!
//! The binaries allocate with mimalloc, which gives memory freed and unused for a second back
//! to the system. A busy engine frees and takes back memory all the time (results, log
//! buffers, groups), and on a kernel with transparent huge pages every page it takes back is
//! zeroed again, 2 MiB at a time: a quarter of `tally ingest`'s CPU in a profile. Waiting ten
//! seconds instead still returns what an idle engine no longer uses.
//!
//! mimalloc also asks for transparent huge pages. On a virtual machine whose host backs guest
//! memory only when it is first touched, a huge page costs its whole 2 MiB at the first write
//! to it, used or not: a fresh `tally ingest` of 200,000 commands spent a second of system
//! time there, against a third of one with ordinary pages, and a restart that loaded
//! 1,000,000 members from their checkpoint took 3.9–5.1 s against 2.6–3.1 s. The binaries turn
//! huge pages off for the process.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The largest alignment every plain `mi_malloc` block of at least that size has: blocks come
/// in multiples of two words, so 16 bytes on 64-bit targets (C's `max_align_t`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc as the global allocator. The `mimalloc` crate sends every request through
/// `mi_malloc_aligned`, whose fast path needs a free block already on the size's page: when
/// that page runs dry it over-allocates from the next size class instead of refilling it, and
/// the page stays dry. In the core a purchase made about five such requests, each costing ten
/// times a fast one and a larger block. Requests that any block satisfies (alignment at most
/// 16 and no larger than the size, the rule Rust's own system allocator uses) go to
/// `mi_malloc`, which refills the page; only stricter alignments take the aligned calls.
pub struct Mimalloc;

/// Whether every plain block of `size` bytes is aligned to `align`.
fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

#[allow(unsafe_code)]
// SAFETY: every call hands mimalloc a size and alignment from a valid `Layout`, and `plain`
// only drops the alignment when mimalloc's size classes already guarantee it; pointers passed
// back came from these same functions.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_malloc(layout.size()) }.cast()
        } else {
            unsafe { mi::mi_malloc_aligned(layout.size(), layout.align()) }.cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            unsafe { mi::mi_zalloc(layout.size()) }.cast()
        } else {
            unsafe { mi::mi_zalloc_aligned(layout.size(), layout.align()) }.cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let block = ptr.cast::<c_void>();
        if plain(layout.align(), new_size) {
            unsafe { mi::mi_realloc(block, new_size) }.cast()
        } else {
            unsafe { mi::mi_realloc_aligned(block, new_size, layout.align()) }.cast()
        }
    }
}

/// How long freed memory stays with the process before it goes back to the system.
pub const PURGE_DELAY_MS: i64 = 10_000;

/// `mi_option_purge_delay`: its place in mimalloc's C enum, which the Rust binding does not
/// name (a test checks it against the environment variable of that name).
const OPTION_PURGE_DELAY: mi::mi_option_t = 15;

/// The environment variable that sets the purge delay; it wins over `PURGE_DELAY_MS`.
pub const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";

/// `mi_option_page_reclaim_on_free`, numbered as `OPTION_PURGE_DELAY` is.
const OPTION_RECLAIM_ON_FREE: mi::mi_option_t = 35;

/// The environment variable for `OPTION_RECLAIM_ON_FREE`; it wins over ours.
pub const RECLAIM_ON_FREE_VARIABLE: &str = "MIMALLOC_PAGE_RECLAIM_ON_FREE";

/// `mi_option_allow_thp`, numbered as `OPTION_PURGE_DELAY` is.
const OPTION_ALLOW_THP: mi::mi_option_t = 43;

/// The environment variable that lets mimalloc use transparent huge pages (1) or not (0); when
/// it is set, `tune` leaves huge pages as it says.
pub const ALLOW_THP_VARIABLE: &str = "MIMALLOC_ALLOW_THP";

/// Sets our options, each unless the environment sets it. Call first thing in `main`, before
/// any thread starts: mimalloc's option setter is not thread-safe.
///
/// - The purge delay (above).
/// - Reclaim on free across threads. Results, commands and log records are made on one
///   thread and freed on another. mimalloc gives up a full page; by default only the thread
///   that made it may take it back, so the freeing thread's frees into it stay remote, each
///   an atomic exchange. With 1 the freeing thread takes the page over: its later frees there
///   are its own, and it allocates from the room they make. `tally ingest` of 200,000
///   commands, four alternating pairs: engine-thread CPU 0.96 s to 0.89 s.
/// - Huge pages off (`disable_huge_pages`).
pub fn tune() {
    let delay_ms = std::ffi::c_long::try_from(PURGE_DELAY_MS).expect("fits");
    set_unless_told(OPTION_PURGE_DELAY, PURGE_DELAY_VARIABLE, delay_ms);
    set_unless_told(OPTION_RECLAIM_ON_FREE, RECLAIM_ON_FREE_VARIABLE, 1);
    if std::env::var_os(ALLOW_THP_VARIABLE).is_none() {
        disable_huge_pages();
    }
}

/// Sets `option` to `value` unless `variable` is in the environment (mimalloc read it).
fn set_unless_told(option: mi::mi_option_t, variable: &str, value: std::ffi::c_long) {
    if std::env::var_os(variable).is_some() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: a plain C call with a valid option number; `tune` runs before other threads.
    unsafe {
        mi::mi_option_set(option, value);
    }
}

/// mimalloc reserved its first memory before `main`, asking for huge pages on it; the process
/// flag covers that memory too, and the option stops mimalloc asking for more.
fn disable_huge_pages() {
    #[allow(unsafe_code)]
    // SAFETY: plain C calls with valid arguments; `tune` runs before other threads.
    unsafe {
        mi::mi_option_set(OPTION_ALLOW_THP, 0);
        // A kernel without the flag refuses it; huge pages then stay as they were.
        #[cfg(target_os = "linux")]
        let _ = libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Whether the process may be given transparent huge pages (Linux's flag; elsewhere, true).
pub fn huge_pages_allowed() -> bool {
    #[cfg(target_os = "linux")]
    {
        #[allow(unsafe_code)]
        // SAFETY: a plain C call; it only reads the process's flag.
        let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        disabled == 0
    }
    #[cfg(not(target_os = "linux"))]
    true
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
    use std::alloc::{GlobalAlloc, Layout};
    use std::process::Command;

    use super::{
        Mimalloc, ALLOW_THP_VARIABLE, PURGE_DELAY_MS, PURGE_DELAY_VARIABLE,
        RECLAIM_ON_FREE_VARIABLE,
    };

    /// Every size up to 2 KiB at every alignment up to 4 KiB, enough blocks of each to run
    /// pages dry: each block is aligned, keeps its bytes through a reallocation that grows it
    /// and one that shrinks it, and zeroed blocks are zero.
    #[test]
    #[allow(unsafe_code)]
    fn blocks_have_the_alignment_asked_for_and_keep_their_bytes() {
        let aligns = (0..=12).map(|shift| 1_usize << shift);
        for align in aligns {
            for size in (1..=2048).step_by(7) {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                let blocks: Vec<*mut u8> = (0..40)
                    .map(|round| {
                        // SAFETY: a non-zero size; the block is freed below.
                        let block = unsafe {
                            if round % 2 == 0 {
                                Mimalloc.alloc(layout)
                            } else {
                                Mimalloc.alloc_zeroed(layout)
                            }
                        };
                        assert!(!block.is_null());
                        assert_eq!(block as usize % align, 0, "{layout:?}");
                        // SAFETY: the block holds `size` bytes.
                        let bytes = unsafe { std::slice::from_raw_parts_mut(block, size) };
                        if round % 2 == 1 {
                            assert!(bytes.iter().all(|byte| *byte == 0), "{layout:?}");
                        }
                        bytes.fill(0xA5);
                        block
                    })
                    .collect();
                for block in blocks {
                    // SAFETY: each block came from `layout` and is resized with it, then freed.
                    unsafe {
                        let grown = Mimalloc.realloc(block, layout, size * 3);
                        assert_eq!(grown as usize % align, 0, "{layout:?} grown");
                        let kept = std::slice::from_raw_parts(grown, size);
                        assert!(kept.iter().all(|byte| *byte == 0xA5), "{layout:?}");
                        let grown_layout = Layout::from_size_align(size * 3, align).expect("valid");
                        let shrunk = Mimalloc.realloc(grown, grown_layout, size.div_ceil(2));
                        assert_eq!(shrunk as usize % align, 0, "{layout:?} shrunk");
                        let shrunk_layout =
                            Layout::from_size_align(size.div_ceil(2), align).expect("valid");
                        Mimalloc.dealloc(shrunk, shrunk_layout);
                    }
                }
            }
        }
    }

    /// Runs `reports_the_settings` in a process of its own (options are set once per process,
    /// before threads) with `variable` set to `value` or unset, and returns what it printed.
    fn settings_in_a_child(variable: &str, value: Option<&str>) -> String {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"));
        child.args([
            "--exact",
            "allocator::tests::reports_the_settings",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for unset in [
            PURGE_DELAY_VARIABLE,
            RECLAIM_ON_FREE_VARIABLE,
            ALLOW_THP_VARIABLE,
        ] {
            child.env_remove(unset);
        }
        if let Some(value) = value {
            child.env(variable, value);
        }
        let output = child.output().expect("the child runs");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).expect("text")
    }

    #[test]
    fn the_purge_delay_is_ours_unless_the_environment_sets_it() {
        // The variable reaches the option we set: so its number is the right one.
        let told = settings_in_a_child(PURGE_DELAY_VARIABLE, Some("1234"));
        assert!(told.contains("purge delay: 1234 ms"), "{told}");
        let ours = settings_in_a_child(PURGE_DELAY_VARIABLE, None);
        assert!(
            ours.contains(&format!("purge delay: {PURGE_DELAY_MS} ms")),
            "{ours}"
        );
    }

    #[test]
    fn pages_are_reclaimed_across_threads_unless_the_environment_says_otherwise() {
        let ours = settings_in_a_child(RECLAIM_ON_FREE_VARIABLE, None);
        assert!(ours.contains("reclaim on free: 1"), "{ours}");
        // A value we never set reaching the option: so its number is the right one.
        let told = settings_in_a_child(RECLAIM_ON_FREE_VARIABLE, Some("-1"));
        assert!(told.contains("reclaim on free: -1"), "{told}");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn huge_pages_are_off_unless_the_environment_allows_them() {
        let ours = settings_in_a_child(ALLOW_THP_VARIABLE, None);
        assert!(
            ours.contains("huge pages option: 0, allowed: false"),
            "{ours}"
        );
        // The variable reaches the option we set (so its number is the right one), and
        // mimalloc then leaves the process's flag alone.
        let allowed = settings_in_a_child(ALLOW_THP_VARIABLE, Some("1"));
        assert!(
            allowed.contains("huge pages option: 1, allowed: true"),
            "{allowed}"
        );
        let refused = settings_in_a_child(ALLOW_THP_VARIABLE, Some("0"));
        assert!(
            refused.contains("huge pages option: 0, allowed: false"),
            "{refused}"
        );
    }

    #[test]
    #[ignore = "run by the tests above, in a process of its own"]
    fn reports_the_settings() {
        super::tune();
        println!("purge delay: {} ms", super::purge_delay_ms());
        #[allow(unsafe_code)]
        // SAFETY: plain C calls with valid option numbers.
        let (reclaim, option) = unsafe {
            (
                libmimalloc_sys::mi_option_get(super::OPTION_RECLAIM_ON_FREE),
                libmimalloc_sys::mi_option_get(super::OPTION_ALLOW_THP),
            )
        };
        println!("reclaim on free: {reclaim}");
        println!(
            "huge pages option: {option}, allowed: {}",
            super::huge_pages_allowed()
        );
    }
}
