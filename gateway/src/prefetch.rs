//! Asks the CPU to start loading memory that the next steps will read. The fan-out walk writes
//! to one socket per candidate, and the kernel's work for that write evicts the cache lines of
//! the next candidates' records: their first reads were most of the walk's cost (`perf
//! annotate`). A prefetch is only a hint: it reads nothing into the program and never faults,
//! whatever the address.

/// Starts loading the first `len` bytes of `value`.
#[inline(always)]
pub fn head<T>(value: &T, len: usize) {
    let start = (value as *const T).cast::<i8>();
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len).step_by(64) {
        // SAFETY: `_mm_prefetch` needs SSE, which is in every x86_64 CPU's baseline, and it
        // neither reads nor faults: any address is sound.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(start.wrapping_add(offset));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}
