//! Asking the processor for memory ahead of its use. The engine's state is far larger than
//! its caches; where the next few cold reads are known in advance (the results about to
//! leave the window, the receipts a checkpoint is about to write), asking early overlaps the
//! waits instead of taking them one after another.

/// Asks for the cache line holding `value` (and the next `lines - 1`), without waiting.
#[inline(always)]
pub fn prefetch<T>(value: &T, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let start = (value as *const T).cast::<i8>();
        for line in 0..lines {
            // SAFETY: a prefetch is a hint: it reads nothing the program sees and never faults,
            // whatever the address; `wrapping_add` keeps the pointer arithmetic defined.
            #[allow(unsafe_code)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    start.wrapping_add(line * 64),
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (value, lines);
}
